using System.Collections.Immutable;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;
using LiveMigration.Shared.Protocol;

namespace LiveMigration.Coordinator.Inventory;

/// <summary>What a command does to the inventory: the answer, and the fact to journal first (none when nothing changes).</summary>
public sealed record InventoryDecision(IInventoryMessage Reply, IInventoryEvent? Event);

/// <summary>
/// What a part of a host's report does: the fact to journal (none when it says nothing new), where the host's chain of
/// parts stands after it (null: unchanged), and the receipt to send once the fact is journaled (null: none, the part
/// waits for the ones before it).
/// </summary>
public sealed record HostReportDecision(IInventoryEvent? Event, HostReportChain? Chain, ReportAcknowledged? Receipt);

/// <summary>The inventory's decisions, pure: the actor persists the event they return, then answers.</summary>
public static class InventoryDecider
{
    /// <summary>
    /// A part of a host's report (see <see cref="HostStatusReport"/>): taken when it is the next of its chain, or when it
    /// begins a new chain with a whole view newer than what the host said before; it becomes a fact only when it says
    /// something new. A repeated part is acknowledged again and changes nothing; a part after a gap waits unanswered (the
    /// host sends every part not acknowledged again, in order); a part of a chain the inventory does not know (it
    /// recovered since) is answered with a resync. A whole view older than the host's last report (an earlier
    /// incarnation's, arriving late) is acknowledged and ignored, so it cannot undo a newer one.
    /// </summary>
    public static HostReportDecision Decide(InventoryState state, HostStatusReport report)
    {
        state.Hosts.TryGetValue(report.HostId, out var known);
        state.Chains.TryGetValue(report.HostId, out var chain);
        ReportAcknowledged Receipt(long seq, bool resync = false) =>
            new(ReportAcknowledged.HostReport, report.At, report.Epoch, seq, resync);

        // a part taken before comes again (its receipt was lost, or it was re-sent meanwhile); a later one is a new view
        if (chain is not null && chain.Epoch == report.Epoch && report.Seq < chain.NextSeq && (known is null || report.At <= known.LastReport))
            return new HostReportDecision(null, null, Receipt(chain.NextSeq - 1));
        if (report.Whole && report.Seq == 0)
        {
            if (known is not null && report.At < known.LastReport)
                return new HostReportDecision(null, null, Receipt(report.Seq));
            var begun = new HostReportChain(report.Epoch, 1, report.WholeEnds ? null : report.Vms.Select(v => v.Id).ToImmutableHashSet());
            if (report.IsWholeInOne)
            {
                var same = known is not null && known.Address == report.Address && known.SpmCapable == report.SpmCapable && known.Vms.Equals(report.Vms);
                return new HostReportDecision(same ? null : new HostReported(report.HostId, report.Address, report.SpmCapable, report.Vms, report.At),
                    begun, Receipt(report.Seq));
            }
            return new HostReportDecision(Change(known, report, GoneAtWholeEnd(known, report, [])), begun, Receipt(report.Seq));
        }
        if (chain is null || chain.Epoch != report.Epoch)
            return chain is not null && report.Epoch < chain.Epoch
                ? new HostReportDecision(null, null, Receipt(report.Seq)) // an older chain's part, late: the newer one stands
                : new HostReportDecision(null, null, Receipt(report.Seq, resync: true));
        if (report.Seq > chain.NextSeq)
            return new HostReportDecision(null, null, null);

        var gone = report.Gone ?? ValueList<VmId>.Empty;
        if (report.Whole && report.WholeEnds) gone = GoneAtWholeEnd(known, report, chain.WholeSoFar ?? []);
        var next = chain with
        {
            NextSeq = chain.NextSeq + 1,
            WholeSoFar = report.Whole && !report.WholeEnds ? (chain.WholeSoFar ?? []).Union(report.Vms.Select(v => v.Id)) : null,
        };
        return new HostReportDecision(Change(known, report, gone), next, Receipt(report.Seq));
    }

    /// <summary>The VMs the inventory lists for the host that no part of its whole view named.</summary>
    private static ValueList<VmId> GoneAtWholeEnd(HostRecord? known, HostStatusReport report, ImmutableHashSet<VmId> namedBefore)
    {
        if (!report.WholeEnds || known is null) return ValueList<VmId>.Empty;
        var named = namedBefore.Union(report.Vms.Select(v => v.Id));
        return known.Vms.Select(v => v.Id).Where(id => !named.Contains(id)).ToValueList();
    }

    /// <summary>The fact of a part: the VMs it changes or adds and those gone that the inventory lists; null when it says nothing new.</summary>
    private static HostVmsChanged? Change(HostRecord? known, HostStatusReport report, ValueList<VmId> gone)
    {
        var before = known?.Vms.ToDictionary(v => v.Id) ?? [];
        var upserted = report.Vms.Where(v => !before.TryGetValue(v.Id, out var was) || !was.Equals(v)).ToValueList();
        var reallyGone = gone.Where(before.ContainsKey).Distinct().ToValueList();
        var sameHost = known is not null && known.Address == report.Address && known.SpmCapable == report.SpmCapable;
        return upserted.Count == 0 && reallyGone.Count == 0 && sameHost
            ? null
            : new HostVmsChanged(report.HostId, report.Address, report.SpmCapable, upserted, reallyGone, report.At);
    }

    /// <summary>
    /// Whether a fact of a report only moves figures that the next report gives again: what a disk allocates (it grows with
    /// its guest's writes, so a writing VM changed at every report) and a domain's used and free bytes. Such a fact is
    /// applied but not journaled (issue 11: every report was a journal write); after a restart the figures are the last
    /// journaled ones until the hosts report again, which they do at once to an inventory that recovered (a resync).
    /// Anything else (a VM, a chain, running or not, a host's address, a domain's reachability) is journaled.
    /// </summary>
    public static bool FiguresOnly(InventoryState state, IInventoryEvent change)
    {
        switch (change)
        {
            case HostVmsChanged e when e.Gone.Count == 0 && state.Hosts.TryGetValue(e.HostId, out var known)
                                       && known.Address == e.Address && known.SpmCapable == e.SpmCapable:
            {
                var before = known.Vms.ToDictionary(v => v.Id);
                return e.Upserted.All(v => before.TryGetValue(v.Id, out var was) && WithoutFigures(was).Equals(WithoutFigures(v)));
            }
            case HostReported e when state.Hosts.TryGetValue(e.HostId, out var known)
                                     && known.Address == e.Address && known.SpmCapable == e.SpmCapable:
                return known.Vms.Select(WithoutFigures).SequenceEqual(e.Vms.Select(WithoutFigures));
            case DomainsReported e:
                return e.Domains.All(domain => state.Domains.FirstOrDefault(d => d.Id == domain.Id) is { } was
                    && InventoryState.MergeDomain(was, domain, e.HostId, state.IsNewest(domain.Id, domain.FiguresAt(e.At)))
                        with { UsedBytes = was.UsedBytes, AvailableBytes = was.AvailableBytes } == was);
            default:
                return false;
        }
    }

    private static VmReport WithoutFigures(VmReport vm) =>
        vm with { Drives = vm.Drives.Select(d => d with { AllocatedBytes = 0 }).ToValueList() };

    /// <summary>
    /// A domain report becomes a fact for the domains it adds, those whose reachability from the reporting host it changes,
    /// and those whose figures it changes when it is newer than the last report of that domain. A domain the report leaves
    /// out is kept: a host that has not attached a new domain yet does not know it, and no command deletes a domain (see
    /// <see cref="InventoryState"/>).
    /// </summary>
    public static DomainsReported? Decide(InventoryState state, DomainStatusReport report)
    {
        var changed = new List<DomainReport>();
        foreach (var domain in report.Domains.GroupBy(d => d.Id).Select(g => g.Last()))
        {
            var known = state.Domains.FirstOrDefault(d => d.Id == domain.Id);
            if (known is null || InventoryState.MergeDomain(known, domain, report.HostId, state.IsNewest(domain.Id, domain.FiguresAt(report.At))) != known)
                changed.Add(domain);
        }
        return changed.Count == 0 ? null : new DomainsReported(changed.ToValueList(), report.At, report.HostId);
    }

    /// <summary>
    /// All or nothing: when any disk is held by another migration, none is taken and the answer names the first
    /// such disk. Disks this migration holds already are not taken again, so a repeated request changes nothing.
    /// </summary>
    public static InventoryDecision Decide(InventoryState state, ReserveDisks reserve, DateTimeOffset now)
    {
        // Its host forgotten since the request read the facts (`lsm host forget`): no host would run the migration's steps.
        if (state.Locate(reserve.Vm) is null)
            return new InventoryDecision(new DisksNotReserved(reserve.Migration, ErrorCodes.VmNotFound,
                $"no host lists VM {reserve.Vm} any more (its host was forgotten?): nothing reserved"), null);
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

    /// <summary>
    /// Forgets a host gone for good, unless a disk of one of the VMs it last reported is held by a migration (that migration's
    /// steps still name the host). A host not known is answered as forgotten, so a repeated request changes nothing.
    /// </summary>
    public static InventoryDecision Decide(InventoryState state, ForgetHost forget, DateTimeOffset now)
    {
        if (!state.Hosts.TryGetValue(forget.HostId, out var host))
            // only its word on a domain left (a report of its domains after it was forgotten): that goes too
            return new InventoryDecision(new HostForgetAnswer(forget.HostId, 0),
                state.Domains.Any(d => d.UnreachableFrom?.Contains(forget.HostId) == true) ? new HostForgotten(forget.HostId, now) : null);
        if ((forget.Address is { } address && address != host.Address) || (forget.LastReport is { } last && last != host.LastReport))
            return new InventoryDecision(new HostForgetAnswer(forget.HostId, host.Vms.Count, ErrorCodes.Conflict,
                $"host {forget.HostId} reported since it was checked (from {host.Address} at {host.LastReport:O}): it is back, and not forgotten"), null);
        var held = host.Vms.SelectMany(v => v.Drives).Select(d => d.Image)
            .FirstOrDefault(i => state.Reservations.ContainsKey(i) || state.SettlingAfter(i, now) is not null);
        if (held != default)
            return new InventoryDecision(new HostForgetAnswer(forget.HostId, host.Vms.Count, ErrorCodes.Conflict,
                $"host {forget.HostId} is not forgotten: disk {held} of one of its VMs is in migration " +
                $"{(state.Reservations.TryGetValue(held, out var m) ? m : state.SettlingAfter(held, now))}; let it end (or abandon it) first"), null);
        return new InventoryDecision(new HostForgetAnswer(forget.HostId, host.Vms.Count), new HostForgotten(forget.HostId, now));
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
        // only the disks whose host still reports them elsewhere settle: one already reported wholly in its place is free at
        // once (its whole chain: a split chain made whole had its leaf there all along)
        var settling = (release.Places ?? ValueList<DiskPlace>.Empty)
            .Where(p => held.Contains(p.Image) && !state.ReportedWhollyOn(p.Image, p.Domain))
            .ToValueList();
        return held.Count == 0
            ? new InventoryDecision(reply, null)
            : new InventoryDecision(reply, new DisksReleasedByMigration(release.Migration, held, now, settling.Count == 0 ? null : settling));
    }
}
