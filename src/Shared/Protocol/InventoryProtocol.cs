using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;

namespace LiveMigration.Shared.Protocol;

/// <summary>What hosts tell the inventory and what the Coordinator asks it. Host ids are short names like <c>host-1</c>.</summary>
public interface IInventoryMessage;

/// <summary>A host's own view, sent by its HSM when it starts, when a VM or a drive's chain changes, and when a coordinator joins.</summary>
public sealed record HostStatusReport(string HostId, string Address, bool SpmCapable, ValueList<VmReport> Vms, DateTimeOffset At)
    : IInventoryMessage;

public sealed record VmReport(VmId Id, string Name, bool Running, ValueList<DriveReport> Drives);

/// <summary>A drive and the chain it runs on now, base → leaf; the leaf's domain is where the disk is.</summary>
public sealed record DriveReport(ImageId Image, ValueList<VolumeRef> Chain, long CapacityBytes, long AllocatedBytes)
{
    public DomainId LeafDomain => Chain[^1].Domain;
}

/// <summary>The storage domains as the SPM sees them, sent when it starts and after each step that changes space.</summary>
public sealed record DomainStatusReport(ValueList<DomainReport> Domains, DateTimeOffset At) : IInventoryMessage;

public sealed record DomainReport(DomainId Id, string Name, string Kind, long CapacityBytes, long UsedBytes, long AvailableBytes, bool Active);

/// <summary>Asks for what the saga validates a request against (answered with <see cref="ValidationFactsReply"/>).</summary>
public sealed record GetValidationFacts(VmId Vm, ValueList<ImageId> Images) : IInventoryMessage;

public sealed record ValidationFactsReply(ValidationFacts Facts) : IInventoryMessage;

/// <summary>Which host runs a VM (answered with <see cref="VmLocation"/>; HostId null when unknown).</summary>
public sealed record LocateVm(VmId Vm) : IInventoryMessage;

public sealed record VmLocation(VmId Vm, string? HostId) : IInventoryMessage;

/// <summary>
/// Reserves disks for a migration, atomically: at most one active migration per disk. Answered with
/// <see cref="DisksReserved"/> or <see cref="DisksBusy"/>. Repeating it for the same migration is a no-op.
/// </summary>
public sealed record ReserveDisks(MigrationId Migration, VmId Vm, ValueList<ImageId> Images) : IInventoryMessage;

public sealed record DisksReserved(MigrationId Migration) : IInventoryMessage;

public sealed record DisksBusy(MigrationId Migration, ImageId Image, MigrationId HeldBy) : IInventoryMessage;

/// <summary>Frees a migration's disks (it finished, or its start was refused).</summary>
public sealed record ReleaseDisks(MigrationId Migration) : IInventoryMessage;

/// <summary>Everything the inventory knows, for the API and the CLI (answered with <see cref="InventorySnapshot"/>).</summary>
public sealed record GetInventory : IInventoryMessage;

public sealed record HostEntry(string HostId, string Address, bool SpmCapable, DateTimeOffset LastReport);

public sealed record InventorySnapshot(
    ValueList<HostEntry> Hosts,
    ValueList<DomainReport> Domains,
    ValueList<VmEntry> Vms,
    ValueList<DiskReservation> Reservations) : IInventoryMessage;

public sealed record VmEntry(string HostId, VmReport Vm);

public sealed record DiskReservation(ImageId Image, MigrationId Migration);

/// <summary>The answer to <see cref="ReleaseDisks"/>, also when the migration held nothing (releasing twice is harmless).</summary>
public sealed record DisksReleased(MigrationId Migration) : IInventoryMessage;

/// <summary>The DistributedPubSub topics of the inventory.</summary>
public static class InventoryTopics
{
    /// <summary>Hosts publish <see cref="HostStatusReport"/> and the SPM <see cref="DomainStatusReport"/> here.</summary>
    public const string Reports = "inventory";
}

/// <summary>
/// A fact the inventory persisted. Only changes are journaled: a host resending the report it sent before
/// writes nothing. The fields are copied from the reports rather than nesting them, so the report messages
/// may evolve without touching what old journals hold.
/// </summary>
public interface IInventoryEvent;

/// <summary>A host's report that differed from what the inventory knew: its VMs replace the ones it listed before.</summary>
public sealed record HostReported(string HostId, string Address, bool SpmCapable, ValueList<VmReport> Vms, DateTimeOffset At)
    : IInventoryEvent;

/// <summary>The SPM's view of the storage domains that differed from the one before: it replaces it whole.</summary>
public sealed record DomainsReported(ValueList<DomainReport> Domains, DateTimeOffset At) : IInventoryEvent;

/// <summary>A migration took these disks (only the ones it did not hold already).</summary>
public sealed record DisksReservedForMigration(MigrationId Migration, VmId Vm, ValueList<ImageId> Images, DateTimeOffset At)
    : IInventoryEvent;

/// <summary>A migration let go of every disk it held.</summary>
public sealed record DisksReleasedByMigration(MigrationId Migration, ValueList<ImageId> Images, DateTimeOffset At)
    : IInventoryEvent;
