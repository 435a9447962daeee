using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;
using LiveMigration.Shared.Protocol;

namespace LiveMigration.Coordinator.Inventory;

/// <summary>What a command does to the inventory: the answer, and the fact to journal first (none when nothing changes).</summary>
public sealed record InventoryDecision(IInventoryMessage Reply, IInventoryEvent? Event);

/// <summary>The inventory's decisions, pure: the actor persists the event they return, then answers.</summary>
public static class InventoryDecider
{
    /// <summary>
    /// A host's report becomes a fact only when it says something new. A report older than the last one heard
    /// from that host (it came by two routes, pubsub and direct) is ignored, so it cannot undo a newer one.
    /// </summary>
    public static HostReported? Decide(InventoryState state, HostStatusReport report)
    {
        if (state.Hosts.TryGetValue(report.HostId, out var known))
        {
            if (report.At < known.LastReport) return null;
            if (known.Address == report.Address && known.SpmCapable == report.SpmCapable && known.Vms.Equals(report.Vms)) return null;
        }
        return new HostReported(report.HostId, report.Address, report.SpmCapable, report.Vms, report.At);
    }

    /// <summary>
    /// A domain report becomes a fact for the domains it adds and those whose figures it changes, when it is newer than
    /// the last report of that domain. A domain the report leaves out is kept: a host that has not attached a new domain
    /// yet does not know it, and no command deletes a domain (see <see cref="InventoryState"/>).
    /// </summary>
    public static DomainsReported? Decide(InventoryState state, DomainStatusReport report)
    {
        var changed = new List<DomainReport>();
        foreach (var domain in report.Domains.GroupBy(d => d.Id).Select(g => g.Last()))
        {
            var known = state.Domains.FirstOrDefault(d => d.Id == domain.Id);
            if (known is null) changed.Add(domain);
            else if (known != domain && (!state.DomainsHeardAt.TryGetValue(domain.Id, out var heard) || report.At >= heard))
                changed.Add(domain);
        }
        return changed.Count == 0 ? null : new DomainsReported(changed.ToValueList(), report.At);
    }

    /// <summary>
    /// All or nothing: when any disk is held by another migration, none is taken and the answer names the first
    /// such disk. Disks this migration holds already are not taken again, so a repeated request changes nothing.
    /// </summary>
    public static InventoryDecision Decide(InventoryState state, ReserveDisks reserve, DateTimeOffset now)
    {
        var toTake = new List<ImageId>();
        foreach (var image in reserve.Images.Distinct())
        {
            if (state.SettlingAfter(image, now) is { } settling)
                return new InventoryDecision(new DisksBusy(reserve.Migration, image, settling, Settling: true), null);
            if (!state.Reservations.TryGetValue(image, out var holder))
                toTake.Add(image);
            else if (holder != reserve.Migration)
                return new InventoryDecision(new DisksBusy(reserve.Migration, image, holder), null);
        }
        var reply = new DisksReserved(reserve.Migration);
        return toTake.Count == 0
            ? new InventoryDecision(reply, null)
            : new InventoryDecision(reply, new DisksReservedForMigration(reserve.Migration, reserve.Vm, toTake.ToValueList(), now));
    }

    /// <summary>Frees every disk the migration holds; releasing a migration that holds nothing is answered the same way.</summary>
    public static InventoryDecision Decide(InventoryState state, ReleaseDisks release, DateTimeOffset now)
    {
        var held = state.Reservations
            .Where(r => r.Value == release.Migration)
            .Select(r => r.Key)
            .OrderBy(i => i.Value)
            .ToValueList();
        var reply = new DisksReleased(release.Migration);
        // only the disks whose host still reports them elsewhere settle: one already reported in its place is free at once
        var settling = (release.Places ?? ValueList<DiskPlace>.Empty)
            .Where(p => held.Contains(p.Image) && state.ReportedDomainOf(p.Image) != p.Domain)
            .ToValueList();
        return held.Count == 0
            ? new InventoryDecision(reply, null)
            : new InventoryDecision(reply, new DisksReleasedByMigration(release.Migration, held, now, settling.Count == 0 ? null : settling));
    }
}
