using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;

namespace LiveMigration.Shared.Protocol;

/// <summary>
/// The operator's management of the pool and the VMs: storage changes go to the SPM singleton, VM work to the
/// <c>/user/vm-manager-{hostId}</c> actor of the VM's host (through DistributedPubSub). Every command is
/// answered with its reply record or with <see cref="ManagementRefused"/>.
/// </summary>
public interface IManagementMessage;

/// <summary>A disk as the SPM made it: the image and its leaf volume (the top of its chain).</summary>
public sealed record DiskLeaf(ImageId Image, VolumeRef Leaf);

/// <summary>
/// One disk of a new VM: a base of <paramref name="SizeBytes"/> with <paramref name="Snapshots"/> qcow2 layers over it.
/// The base is raw or qcow2, sparse or preallocated; a message written before those fields existed reads as a sparse raw base.
/// </summary>
public sealed record NewDisk(long SizeBytes, DomainId Domain, int Snapshots, VolumeFormat BaseFormat = VolumeFormat.Raw,
    VolumeAllocation BaseAllocation = VolumeAllocation.Sparse);

/// <summary>Any management command refused or failed: the code says why (an <see cref="ErrorCodes"/> value).</summary>
public sealed record ManagementRefused(string Code, string Message) : IManagementMessage;

// ---- to the SPM

/// <summary>Creates a file storage domain under <paramref name="Root"/> (an absolute folder every host sees); 0 capacity = the free space there.</summary>
public sealed record CreateDomain(string Name, string Root, long CapacityBytes) : IManagementMessage;

public sealed record DomainCreated(DomainReport Domain, string Root) : IManagementMessage;

/// <summary>Creates the images of a new VM's disks, all of them or none (space is checked first).</summary>
public sealed record CreateVmDisks(VmId Vm, ValueList<NewDisk> Disks) : IManagementMessage;

public sealed record VmDisksCreated(VmId Vm, ValueList<DiskLeaf> Disks) : IManagementMessage;

/// <summary>Removes the images of a VM whose creation failed on its host (answered with <see cref="VmDisksDeleted"/>).</summary>
public sealed record DeleteVmDisks(VmId Vm, ValueList<DiskLeaf> Disks) : IManagementMessage;

public sealed record VmDisksDeleted(VmId Vm) : IManagementMessage;

/// <summary>Creates an empty qcow2 volume over each of the given current leaves, for a live snapshot.</summary>
public sealed record CreateSnapshotVolumes(VmId Vm, ValueList<DiskLeaf> CurrentLeaves) : IManagementMessage;

public sealed record SnapshotVolumesCreated(VmId Vm, ValueList<DiskLeaf> NewLeaves) : IManagementMessage;

/// <summary>Asks the SPM singleton where it runs now (answered with <see cref="SpmLocation"/>).</summary>
public sealed record GetSpmLocation : IManagementMessage;

/// <summary>The cluster address of the node that runs the SPM.</summary>
public sealed record SpmLocation(string Address) : IManagementMessage;

// ---- to every host (topic "domains")

/// <summary>A domain created at runtime: every host attaches it and remembers its root across restarts.</summary>
public sealed record AttachDomain(DomainId Domain, string Root) : IManagementMessage;

// ---- to the VM's host

/// <summary>Defines a VM on disks the SPM made and starts it.</summary>
public sealed record CreateVm(VmId Vm, string Name, ValueList<DiskLeaf> Disks) : IManagementMessage;

/// <summary>Starts a stopped VM on the chains it had when it stopped.</summary>
public sealed record StartVm(VmId Vm) : IManagementMessage;

/// <summary>Stops a VM (and its guest I/O); it stays defined on its host.</summary>
public sealed record StopVm(VmId Vm) : IManagementMessage;

/// <summary>Moves each drive's writes onto the new leaf the SPM made for it.</summary>
public sealed record SnapshotVm(VmId Vm, ValueList<DiskLeaf> NewLeaves) : IManagementMessage;

/// <summary>The VM as its host sees it now (answered with <see cref="ManagedVm"/>).</summary>
public sealed record GetManagedVm(VmId Vm) : IManagementMessage;

public sealed record ManagedVm(string HostId, VmReport Vm) : IManagementMessage;

/// <summary>Starts the guest workload on every drive of a running VM for <paramref name="Seconds"/> (0 = until the VM stops).</summary>
/// <param name="FlushIntervalMs">How often the guest flushes its acknowledged writes to make them durable; 0 = never.</param>
/// <param name="Fua">Every write with FUA: durable on its own acknowledgement.</param>
public sealed record StartGuestIo(VmId Vm, long BytesPerSecond, int Seconds, int FlushIntervalMs = StartGuestIo.DefaultFlushIntervalMs,
    bool Fua = false) : IManagementMessage
{
    public const int DefaultFlushIntervalMs = 100;
    public const int MaxFlushIntervalMs = 3_600_000;
}

public sealed record GetGuestIo(VmId Vm) : IManagementMessage;

/// <summary>The guest workload's counters over all drives (of the last run when none runs).</summary>
/// <param name="DurableWrites">Acknowledged writes of this run that a completed FLUSH (or FUA) made durable.</param>
public sealed record GuestIoStatus(VmId Vm, bool Running, long BytesPerSecond, int Seconds, long Writes, long Bytes, long Errors,
    double ElapsedSeconds, string? LastError, long LedgerWrites, long DurableWrites = 0, int FlushIntervalMs = 0, bool Fua = false,
    long Flushes = 0) : IManagementMessage;

/// <summary>Checks every write the VM's ledgers hold as acknowledged against the drives' data.</summary>
public sealed record VerifyGuest(VmId Vm) : IManagementMessage;

/// <param name="Checked">Blocks the ledgers name, all read back.</param>
/// <param name="Lost">Blocks whose newest durable write (one a completed FLUSH or FUA covered) is gone, with no later write in
/// its place: data loss.</param>
/// <param name="InDoubt">Blocks that keep every durable write but not their last acknowledged one: an acknowledged write no
/// FLUSH covered yet, which a crash may take back (not a loss; in a VM that never crashed, suspicious).</param>
/// <param name="DurableChecked">Blocks with a durable write among those checked (0 from a host that predates durability).</param>
public sealed record GuestVerified(VmId Vm, long Checked, long Lost, long InDoubt, ValueList<string> Details, long DurableChecked = 0) : IManagementMessage;

/// <summary>The DistributedPubSub topic and actor names of the management protocol.</summary>
public static class ManagementTopics
{
    /// <summary>The SPM publishes <see cref="AttachDomain"/> here; every host subscribes.</summary>
    public const string Domains = "domains";

    public static string VmManagerName(string hostId) => $"vm-manager-{hostId}";

    public static string VmManagerPath(string hostId) => $"/user/{VmManagerName(hostId)}";
}
