using System.Text.Json.Serialization;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;

namespace LiveMigration.Shared.Protocol;

/// <summary>What hosts tell the inventory and what the Coordinator asks it. Host ids are short names like <c>host-1</c>.</summary>
public interface IInventoryMessage;

/// <summary>
/// A host's own view, sent by its reporter when it starts, when a VM or a drive's chain changes, and when a coordinator
/// joins. A host that runs hundreds of VMs cannot say all of them in one message (a remote message has a size limit),
/// nor should every change of one VM journal all of them: so a reporter sends its whole view once (in as many parts as
/// its size needs) and then only what changed, each part numbered in a chain (<paramref name="Epoch"/>,
/// <paramref name="Seq"/>). The inventory applies a chain's parts in order, none skipped; a part it cannot place (its
/// chain unknown after the inventory restarted) is answered with a resync, and the reporter sends its whole view again.
/// The defaults are a whole view in one part.
/// </summary>
/// <param name="Vms">In a part of the whole view: those VMs; in a change: the VMs added or changed since the part before.</param>
/// <param name="Epoch">The chain: the reporter's incarnation and its whole view that began it (ticks of that view's time).</param>
/// <param name="Seq">The part's place in its chain, from 0 (the first part of the whole view).</param>
/// <param name="Whole">The part belongs to the whole view that begins the chain.</param>
/// <param name="WholeEnds">The last part of the whole view: VMs the inventory lists for the host that none of its parts named are gone.</param>
/// <param name="Gone">In a change: the VMs the host no longer has.</param>
public sealed record HostStatusReport(string HostId, string Address, bool SpmCapable, ValueList<VmReport> Vms, DateTimeOffset At,
    long Epoch = 0, long Seq = 0, bool Whole = true, bool WholeEnds = true, ValueList<VmId>? Gone = null)
    : IInventoryMessage
{
    /// <summary>A whole view in this one message: the form every report had before reports came in parts.</summary>
    public bool IsWholeInOne => Whole && Seq == 0 && WholeEnds;
}

public sealed record VmReport(VmId Id, string Name, bool Running, ValueList<DriveReport> Drives);

/// <summary>
/// A drive and the chain it runs on now, base → leaf; the leaf's domain is where the disk is. A host that could not
/// resolve the chain (its record and what runs disagree, a volume is missing) reports it empty: such a disk has no
/// domain, and every view shows it as unresolved instead of failing.
/// </summary>
/// <param name="BaseFormat">The format of the chain's base (every layer above it is qcow2); null when unresolved, or in a report written before it was told.</param>
/// <param name="BaseAllocation">Whether the base is sparse or preallocated; null as <paramref name="BaseFormat"/>.</param>
public sealed record DriveReport(ImageId Image, ValueList<VolumeRef> Chain, long CapacityBytes, long AllocatedBytes,
    VolumeFormat? BaseFormat = null, VolumeAllocation? BaseAllocation = null)
{
    /// <summary>The domain of the chain's leaf, or null when the chain is empty (unresolved).</summary>
    public DomainId? LeafDomain => Chain.Count > 0 ? Chain[^1].Domain : null;

    /// <summary>Why the disk has no place, or null when its chain names one.</summary>
    public string? Unresolved => Chain.Count > 0 ? null : "chain unresolved: the host reported no volume for this drive";
}

/// <summary>
/// The storage domains one host sees, sent when it starts and after each step that changes space; the API also sends
/// the SPM's answer to a domain creation. The inventory merges reports by domain id (a host that has not attached a new
/// domain yet does not make it vanish) and takes each domain's figures from the newest report. Acknowledged with
/// <see cref="ReportAcknowledged"/>.
/// </summary>
/// <param name="HostId">Who reported (null in reports written before hosts named themselves).</param>
public sealed record DomainStatusReport(ValueList<DomainReport> Domains, DateTimeOffset At, string? HostId = null) : IInventoryMessage;

/// <summary>
/// The inventory's receipt for a <see cref="HostStatusReport"/> (<see cref="Report"/> = "host") or a
/// <see cref="DomainStatusReport"/> ("domains") made at <see cref="At"/>: the reporter re-sends until it gets it.
/// Sent also for a report that changed nothing or was older than what the inventory knew: it was delivered.
/// For a host report it names the chain and the last part applied (every part up to <paramref name="Seq"/> is);
/// <paramref name="Resync"/> asks the reporter for its whole view again (the inventory does not know the chain).
/// </summary>
public sealed record ReportAcknowledged(string Report, DateTimeOffset At, long Epoch = 0, long Seq = 0, bool Resync = false) : IInventoryMessage
{
    public const string HostReport = "host";
    public const string DomainsReport = "domains";
}

/// <summary>
/// A storage domain's figures. A host reports <paramref name="Active"/> as it sees the domain (false: not reachable from it,
/// e.g. unmounted) and no <paramref name="UnreachableFrom"/>; the inventory keeps, per domain, the hosts whose last report
/// could not reach it (<paramref name="UnreachableFrom"/>), and the domain is active only while there are none.
/// <paramref name="CountedAt"/>: when a host counted <paramref name="UsedBytes"/>, when before its report (a count kept for
/// reports): the inventory takes the newest figures by it, so a host's older count does not undo another's newer one.
/// The inventory does not keep it in its view.
/// </summary>
public sealed record DomainReport(DomainId Id, string Name, string Kind, long CapacityBytes, long UsedBytes, long AvailableBytes, bool Active,
    [property: System.Text.Json.Serialization.JsonIgnore(Condition = System.Text.Json.Serialization.JsonIgnoreCondition.WhenWritingNull)]
    ValueList<string>? UnreachableFrom = null,
    [property: System.Text.Json.Serialization.JsonIgnore(Condition = System.Text.Json.Serialization.JsonIgnoreCondition.WhenWritingNull)]
    DateTimeOffset? CountedAt = null)
{
    /// <summary>When its figures were made: the count's time, else the report's.</summary>
    public DateTimeOffset FiguresAt(DateTimeOffset reportedAt) => CountedAt ?? reportedAt;
}

/// <summary>Asks for what the saga validates a request against (answered with <see cref="ValidationFactsReply"/>).</summary>
public sealed record GetValidationFacts(VmId Vm, ValueList<ImageId> Images) : IInventoryMessage;

public sealed record ValidationFactsReply(ValidationFacts Facts) : IInventoryMessage;

/// <summary>Which host runs a VM (answered with <see cref="VmLocation"/>; HostId null when unknown).</summary>
public sealed record LocateVm(VmId Vm) : IInventoryMessage;

public sealed record VmLocation(VmId Vm, string? HostId) : IInventoryMessage;

/// <summary>
/// Reserves disks for a migration, atomically: at most one active migration per disk. Answered with
/// <see cref="DisksReserved"/>, <see cref="DisksBusy"/> or <see cref="DisksNotReserved"/>. Repeating it for the same migration is a no-op.
/// </summary>
public sealed record ReserveDisks(MigrationId Migration, VmId Vm, ValueList<ImageId> Images) : IInventoryMessage;

public sealed record DisksReserved(MigrationId Migration) : IInventoryMessage;

/// <param name="Settling">HeldBy has finished, and the disk's host has not reported it in its new place yet.</param>
public sealed record DisksBusy(MigrationId Migration, ImageId Image, MigrationId HeldBy, bool Settling = false) : IInventoryMessage;

/// <summary>Nothing reserved, for a reason that is not another migration (e.g. no host lists the VM any more).</summary>
public sealed record DisksNotReserved(MigrationId Migration, string Code, string Message) : IInventoryMessage;

/// <summary>Frees a migration's disks (it finished, or its start was refused).</summary>
/// <param name="Places">Where each disk lies now that the migration finished (its destination when it completed, its source
/// when it was rolled back or skipped): until its host reports it there, the disk is still settling and no new migration
/// may take it, since a plan made from the host's older report would start from where the disk no longer is.</param>
public sealed record ReleaseDisks(MigrationId Migration, ValueList<DiskPlace>? Places = null) : IInventoryMessage;

/// <summary>The domain a disk lies on.</summary>
public sealed record DiskPlace(ImageId Image, DomainId Domain);

/// <summary>Everything the inventory knows, for the API and the CLI (answered with <see cref="InventorySnapshot"/>).</summary>
public sealed record GetInventory : IInventoryMessage;

/// <summary>
/// An operator's "this host is gone for good" (answered with <see cref="HostForgetAnswer"/>): its record, its VMs as it last
/// reported them and its word on which domains it cannot reach go. Refused while one of its VMs' disks is in a migration.
/// The caller checks first that the host is not a cluster member, and names the <paramref name="Address"/> and
/// <paramref name="LastReport"/> it checked: a host that reported since (it came back meanwhile) is not forgotten.
/// </summary>
public sealed record ForgetHost(string HostId, string? Address = null, DateTimeOffset? LastReport = null) : IInventoryMessage;

/// <summary>The answer to <see cref="ForgetHost"/>: <paramref name="RefusalCode"/> null when it is forgotten (or was not known).</summary>
public sealed record HostForgetAnswer(string HostId, int Vms, string? RefusalCode = null, string? RefusalMessage = null) : IInventoryMessage;

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
    /// <summary>
    /// The inventory publishes here each change of a host's VMs it journaled (<see cref="HostReported"/>,
    /// <see cref="HostVmsChanged"/>): every Coordinator keeps its directory of which host runs which VM from them.
    /// </summary>
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

/// <summary>
/// A part of a host's report that changed what the inventory knew: <paramref name="Upserted"/> replace the VMs of the same
/// id (or are added), <paramref name="Gone"/> are no longer the host's; its other VMs stay as they were.
/// </summary>
public sealed record HostVmsChanged(string HostId, string Address, bool SpmCapable, ValueList<VmReport> Upserted, ValueList<VmId> Gone,
    DateTimeOffset At) : IInventoryEvent;

/// <summary>
/// Storage domains a report added or whose figures it changed: each replaces the entry with its id, new ones are added,
/// the others stay. (Journals written before this rule held whole lists that replaced the one before; they now replay as
/// the union of every domain ever reported, which is the rule they should have followed: no domain is ever deleted.)
/// </summary>
/// <paramref name="HostId"/> names the host whose report it was (null in journals written before it was kept): what that host
/// could not reach stays inactive until the same host reaches it again, whatever the other hosts report meanwhile.
public sealed record DomainsReported(ValueList<DomainReport> Domains, DateTimeOffset At,
    [property: System.Text.Json.Serialization.JsonIgnore(Condition = System.Text.Json.Serialization.JsonIgnoreCondition.WhenWritingNull)]
    string? HostId = null) : IInventoryEvent;

/// <summary>An operator forgot a host that is gone for good (<see cref="ForgetHost"/>).</summary>
public sealed record HostForgotten(string HostId, DateTimeOffset At) : IInventoryEvent;

/// <summary>A migration took these disks (only the ones it did not hold already).</summary>
public sealed record DisksReservedForMigration(MigrationId Migration, VmId Vm, ValueList<ImageId> Images, DateTimeOffset At)
    : IInventoryEvent;

/// <summary>A migration let go of every disk it held; those in <paramref name="Settling"/> stay busy until their host reports them there.</summary>
/// (Left out of the journal when null, so the events written before it have the same form.)
public sealed record DisksReleasedByMigration(MigrationId Migration, ValueList<ImageId> Images, DateTimeOffset At,
    [property: JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] ValueList<DiskPlace>? Settling = null)
    : IInventoryEvent;
