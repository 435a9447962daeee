using LiveMigration.Shared.Model;

namespace LiveMigration.HostNode.Hypervisor;

/// <summary>
/// The hypervisor port: the VMs of one host and their block jobs. Drives are named by image id.
/// Calls are idempotent where a retry after a lost answer is likely (start, stop, mirror, pivot,
/// cancel, snapshot, switch: repeating one that already happened returns the current state).
/// A VM whose QEMU is gone fails every call with <see cref="ErrorCodes.VmNotRunning"/>.
/// </summary>
public interface IHypervisor : IAsyncDisposable
{
    /// <summary><c>qmp</c>, <c>libvirt</c> or <c>sim</c>.</summary>
    string Kind { get; }

    /// <summary>Job state changes and VMs that went away, as they happen (never from a timer).</summary>
    event Action<HypervisorEvent>? EventRaised;

    Task<VmInfo> StartVmAsync(VmSpec spec, CancellationToken ct = default);
    Task StopVmAsync(VmId vm, CancellationToken ct = default);
    /// <summary>Re-attaches to the VMs a previous instance of this host started and that still run (and their block jobs); forgets the dead ones.</summary>
    Task<IReadOnlyList<VmInfo>> AdoptRunningVmsAsync(CancellationToken ct = default);
    Task<IReadOnlyList<VmInfo>> ListVmsAsync(CancellationToken ct = default);
    /// <summary>
    /// Whether the VM, which this instance does not list (not adopted), may still run: its process from before this host
    /// restarted is alive though it could not be adopted (its monitor did not answer). Such a VM is reported running, not
    /// stopped: a Coordinator fails the pre-copy of a VM reported stopped.
    /// </summary>
    Task<bool> RunsUnadoptedAsync(VmId vm, CancellationToken ct = default) => Task.FromResult(false);
    /// <summary>The VMs for which <see cref="RunsUnadoptedAsync"/> holds: the host's HSM tries to adopt them again.</summary>
    Task<IReadOnlyList<VmId>> ListUnadoptedAsync(CancellationToken ct = default) => Task.FromResult<IReadOnlyList<VmId>>([]);
    /// <summary>The VM with each drive's chain as read back from the hypervisor now.</summary>
    Task<VmInfo> DescribeVmAsync(VmId vm, CancellationToken ct = default);

    // ---- pre-copy ----
    /// <summary>Starts mirroring the drive's active layer (sync=top) into the destination leaf, opened without backing.</summary>
    Task<BlockJobInfo> StartMirrorAsync(MirrorRequest request, CancellationToken ct = default);
    /// <summary>The drive's block job, or null when it has none.</summary>
    Task<BlockJobInfo?> GetBlockJobAsync(VmId vm, ImageId drive, CancellationToken ct = default);
    /// <summary>Changes the running job's speed limit (bytes per second, 0 = unlimited).</summary>
    Task SetJobSpeedAsync(VmId vm, ImageId drive, long bytesPerSecond, CancellationToken ct = default);
    /// <summary>
    /// Pivots a READY mirror onto the destination: attaches <paramref name="destinationBacking"/>
    /// (the complete destination copy below the leaf, base → top) under the destination leaf,
    /// completes the job, closes the source nodes, and returns the drive as read back.
    /// </summary>
    Task<DriveState> PivotAsync(VmId vm, ImageId drive, IReadOnlyList<ChainLayer> destinationBacking, CancellationToken ct = default);
    /// <summary>
    /// The path of the leaf the drive's mirror writes into (its running job's, as the hypervisor knows it), or null without
    /// one or where the adapter cannot tell: a step acts only on the mirror its migration started.
    /// </summary>
    Task<string?> MirrorTargetAsync(VmId vm, ImageId drive, CancellationToken ct = default) => Task.FromResult<string?>(null);
    /// <summary>Abandons the mirror: the drive stays on its source chain, the destination leaf is closed.</summary>
    Task<DriveState> CancelMirrorAsync(VmId vm, ImageId drive, CancellationToken ct = default);

    // ---- post-copy ----
    /// <summary>Live snapshot onto <paramref name="newLeaf"/> (on the destination, backed by the current leaf): the VM now writes there.</summary>
    Task<DriveState> LiveSnapshotAsync(VmId vm, ImageId drive, ChainLayer newLeaf, CancellationToken ct = default);
    /// <summary>
    /// Switches the active leaf's backing to <paramref name="newBacking"/> (the copied chain, base → top,
    /// same data as the current backing), rewrites the leaf's header to match, and closes the old backing nodes.
    /// </summary>
    Task<DriveState> SwitchBackingChainAsync(VmId vm, ImageId drive, IReadOnlyList<ChainLayer> newBacking, CancellationToken ct = default);
}
