namespace LiveMigration.Shared.Model;

/// <summary>One layer of a drive's chain as the hypervisor opens it.</summary>
/// <param name="Path">A file path for the <c>file</c> kind; an opaque <c>sim:</c> locator for the <c>sim</c> kind.</param>
public sealed record ChainLayer(VolumeRef Volume, string Path, VolumeFormat Format);

/// <summary>A drive's chain, ordered base → leaf. The drive is named by its image id.</summary>
public sealed record DriveChain(ImageId Image, IReadOnlyList<ChainLayer> Layers)
{
    public ChainLayer Leaf => Layers[^1];
    /// <summary>Every layer but the leaf: what a new leaf's backing is.</summary>
    public IReadOnlyList<ChainLayer> Backing => Layers.Take(Layers.Count - 1).ToList();
}

public sealed record VmSpec(VmId Id, string Name, IReadOnlyList<DriveChain> Drives, int MemoryMiB = 32);

public enum CopyMode { Background, WriteBlocking }

public enum BlockJobPhase { Running, Ready, Completed, Cancelled, Failed }

/// <summary>A mirror job on one drive. Offset/Length are QEMU's progress counters (Length can grow while the guest writes).</summary>
public sealed record BlockJobInfo(
    string JobId,
    ImageId Drive,
    BlockJobPhase Phase,
    long Offset,
    long Length,
    long SpeedBytesPerSecond,
    string? Error = null,
    /// <summary>How the mirror copies, as the adapter started it; null where the hypervisor does not say (libvirt).</summary>
    [property: System.Text.Json.Serialization.JsonIgnore(Condition = System.Text.Json.Serialization.JsonIgnoreCondition.WhenWritingNull)]
    CopyMode? Mode = null);

/// <summary>What a drive runs on now, as read back from the hypervisor (not as we believe it should be).</summary>
/// <param name="OpenChain">The paths of the layers the drive's active node is made of, base → leaf.</param>
/// <param name="GuestSocket">The unix socket of the drive's NBD export: the guest's view of the disk (empty for sim).</param>
/// <param name="ExportName">The NBD export name on that socket.</param>
public sealed record DriveState(
    ImageId Image,
    IReadOnlyList<string> OpenChain,
    string GuestSocket,
    string ExportName,
    BlockJobInfo? Job)
{
    /// <summary>
    /// Set only on the answer of a call that switched the drive (pivot, live snapshot, backing switch) just now: how long
    /// the hypervisor's switching command(s) held the drive, timed by the adapter on the host. Null otherwise.
    /// </summary>
    public TimeSpan? SwitchDuration { get; init; }
}

public sealed record VmInfo(VmId Id, string Name, int? Pid, bool Running, IReadOnlyList<DriveState> Drives)
{
    public DriveState Drive(ImageId image) =>
        Drives.FirstOrDefault(d => d.Image == image)
        ?? throw new OperationFailedException(ErrorCodes.ImageNotFound, $"VM {Id} has no drive for image {image}");
}

public sealed record MirrorRequest(
    VmId Vm,
    ImageId Drive,
    /// <summary>The destination leaf, already created (empty) on the destination domain.</summary>
    ChainLayer DestinationLeaf,
    /// <summary>Bytes per second; 0 means unlimited.</summary>
    long SpeedBytesPerSecond = 0,
    CopyMode Mode = CopyMode.Background);

/// <summary>What a hypervisor pushes: job state changes and VMs that went away.</summary>
public abstract record HypervisorEvent(VmId Vm);
public sealed record BlockJobReady(VmId Vm, ImageId Drive, string JobId) : HypervisorEvent(Vm);
public sealed record BlockJobCompleted(VmId Vm, ImageId Drive, string JobId) : HypervisorEvent(Vm);
public sealed record BlockJobCancelled(VmId Vm, ImageId Drive, string JobId) : HypervisorEvent(Vm);
public sealed record BlockJobFailed(VmId Vm, ImageId Drive, string JobId, string Error) : HypervisorEvent(Vm);
/// <summary>A VM was started on this host (not raised for one adopted or already running).</summary>
public sealed record VmStarted(VmId Vm) : HypervisorEvent(Vm);
/// <summary>The VM's process is gone (stopped on request, killed or crashed).</summary>
public sealed record VmStopped(VmId Vm, string Reason) : HypervisorEvent(Vm);
