using System.Collections.Immutable;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;
using LiveMigration.Shared.Protocol;

namespace LiveMigration.Coordinator.Inventory;

/// <summary>What one host last told the inventory.</summary>
public sealed record HostRecord(string HostId, string Address, bool SpmCapable, ValueList<VmReport> Vms, DateTimeOffset LastReport);

/// <summary>
/// Where a host's chain of report parts stands (<see cref="HostStatusReport"/>): its epoch, the part expected next, and,
/// while the whole view that began it arrives in parts, the VMs its parts named so far.
/// </summary>
public sealed record HostReportChain(long Epoch, long NextSeq, ImmutableHashSet<VmId>? WholeSoFar);

/// <summary>
/// The Coordinator's inventory: hosts and the VMs they run, the storage domains, and which migration holds
/// which disk. Immutable; rebuilt from <see cref="IInventoryEvent"/>s alone (or a snapshot and the events after it).
/// A host that stops reporting is kept: a host that is down still owns its VMs.
/// </summary>
/// <remarks>
/// The pool's domains are not any one host's to list: every host reports the domains it has attached, and a host that
/// has not attached a domain just created (the SPM announces it to every host) would otherwise make it vanish. So domains
/// are merged by id and never dropped by a report that leaves one out; each domain's figures come from the newest report
/// that named it (<see cref="DomainsHeardAt"/>), so a late report built before a change cannot undo it.
/// </remarks>
public sealed record InventoryState(
    ImmutableSortedDictionary<string, HostRecord> Hosts,
    ValueList<DomainReport> Domains,
    ImmutableDictionary<ImageId, MigrationId> Reservations)
{
    public static readonly InventoryState Empty = new(
        ImmutableSortedDictionary.Create<string, HostRecord>(StringComparer.Ordinal),
        ValueList<DomainReport>.Empty,
        ImmutableDictionary<ImageId, MigrationId>.Empty);

    /// <summary>
    /// Disks a finished migration let go of that their host has not reported in their new place yet, with that place: busy
    /// for new migrations until a report shows them there. Not in the snapshot: after a recovery from one, such a disk is
    /// free again (the window is a report's delay, and the hosts re-check every chain a step names).
    /// </summary>
    public ImmutableDictionary<ImageId, (MigrationId Migration, DomainId Domain, DateTimeOffset Since)> Settling { get; init; } =
        ImmutableDictionary<ImageId, (MigrationId Migration, DomainId Domain, DateTimeOffset Since)>.Empty;

    /// <summary>
    /// How long a disk settles at most: a host that has not reported it in its place by then (down, or its report lost) does
    /// not hold it for good; a plan made from its older report then fails on the hosts' own checks, as before settling existed.
    /// </summary>
    public static readonly TimeSpan SettleLimit = TimeSpan.FromSeconds(60);

    /// <summary>The migration a disk settles after, while it does at <paramref name="now"/>.</summary>
    public MigrationId? SettlingAfter(ImageId image, DateTimeOffset now) =>
        Settling.TryGetValue(image, out var settling) && now - settling.Since < SettleLimit ? settling.Migration : null;

    /// <summary>When each domain's figures were reported. Not in the snapshot: after a recovery from one, the next report of a domain is taken.</summary>
    public ImmutableDictionary<DomainId, DateTimeOffset> DomainsHeardAt { get; init; } = ImmutableDictionary<DomainId, DateTimeOffset>.Empty;

    /// <summary>
    /// Each host's chain of report parts. Not in the snapshot, nor journaled: after a recovery the inventory knows no chain,
    /// answers the next part with a resync, and the host sends its whole view again.
    /// </summary>
    public ImmutableDictionary<string, HostReportChain> Chains { get; init; } = ImmutableDictionary<string, HostReportChain>.Empty;

    public InventoryState Apply(IInventoryEvent @event) => @event switch
    {
        HostReported e => this with
        {
            Hosts = Hosts.SetItem(e.HostId, new HostRecord(e.HostId, e.Address, e.SpmCapable, e.Vms, e.At)),
            Settling = SettledBy(e.Vms),
        },
        HostVmsChanged e => this with
        {
            Hosts = Hosts.SetItem(e.HostId, Hosts.TryGetValue(e.HostId, out var known)
                ? new HostRecord(e.HostId, e.Address, e.SpmCapable, Upsert(known.Vms, e.Upserted, e.Gone), e.At > known.LastReport ? e.At : known.LastReport)
                : new HostRecord(e.HostId, e.Address, e.SpmCapable, e.Upserted, e.At)),
            Settling = SettledBy(e.Upserted),
        },
        DomainsReported e => MergeDomains(e.Domains, e.At, e.HostId),
        HostForgotten e => this with
        {
            Hosts = Hosts.Remove(e.HostId),
            Chains = Chains.Remove(e.HostId),
            // its word on what it cannot reach goes with it
            Domains = Domains.Select(d => d.UnreachableFrom?.Contains(e.HostId) == true ? MergeDomain(d, d with { Active = true }, e.HostId, newest: false) : d)
                .ToValueList(),
        },
        DisksReservedForMigration e => this with
        {
            Reservations = Reservations.SetItems(e.Images.Select(i => KeyValuePair.Create(i, e.Migration))),
        },
        DisksReleasedByMigration e => this with
        {
            // only what this migration still holds: a disk released and taken by another since stays taken
            Reservations = Reservations.RemoveRange(e.Images.Where(i => Reservations.TryGetValue(i, out var m) && m == e.Migration)),
            Settling = Settling.SetItems((e.Settling ?? ValueList<DiskPlace>.Empty)
                .Select(p => KeyValuePair.Create(p.Image, (e.Migration, p.Domain, e.At)))),
        },
        _ => throw new ArgumentException($"the inventory has no rule for the event {@event.GetType().Name}", nameof(@event)),
    };

    /// <summary>The disks still settling once these VMs were reported: a disk seen in its new place has settled.</summary>
    private ImmutableDictionary<ImageId, (MigrationId Migration, DomainId Domain, DateTimeOffset Since)> SettledBy(ValueList<VmReport> vms) =>
        Settling.IsEmpty ? Settling : Settling.RemoveRange(vms.SelectMany(v => v.Drives)
            // its whole chain there: a report built between a post-copy's live snapshot and its backing switch (arriving late)
            // shows the leaf there and the older layers still on the source
            .Where(d => Settling.TryGetValue(d.Image, out var settling) && d.Chain.Count > 0 && d.Chain.All(l => l.Domain == settling.Domain))
            .Select(d => d.Image));

    /// <summary>The VMs in their order, each upserted one in its place (new ones last), the gone ones left out.</summary>
    private static ValueList<VmReport> Upsert(ValueList<VmReport> vms, ValueList<VmReport> upserted, ValueList<VmId> gone)
    {
        if (upserted.Count == 0 && gone.Count == 0) return vms;
        var replacing = upserted.GroupBy(v => v.Id).ToDictionary(g => g.Key, g => g.Last());
        var leaving = gone.ToHashSet();
        var result = new List<VmReport>(vms.Count + replacing.Count);
        foreach (var vm in vms)
        {
            if (leaving.Contains(vm.Id)) continue;
            result.Add(replacing.Remove(vm.Id, out var newer) ? newer : vm);
        }
        foreach (var vm in upserted)
            if (replacing.Remove(vm.Id, out var newest)) result.Add(newest);
        return result.ToValueList();
    }

    /// <summary>A part of the host's report chain was taken: the chain moves on, and the host was heard at <paramref name="at"/>.</summary>
    public InventoryState Chained(string hostId, HostReportChain chain, DateTimeOffset at) =>
        (this with { Chains = Chains.SetItem(hostId, chain) }).Heard(hostId, at);

    private InventoryState MergeDomains(ValueList<DomainReport> reported, DateTimeOffset at, string? hostId)
    {
        var byId = reported.GroupBy(d => d.Id).ToDictionary(g => g.Key,
            g => MergeDomain(Domains.FirstOrDefault(known => known.Id == g.Key), g.Last(), hostId, IsNewest(g.Key, g.Last().FiguresAt(at))));
        // known domains keep their place in the list, new ones go after them in the order reported
        var merged = Domains.Select(d => byId.GetValueOrDefault(d.Id, d)).ToList();
        merged.AddRange(byId.Values.Where(d => Domains.All(known => known.Id != d.Id)));
        // the figures' time (a host's count may be older than its report): a host that cannot reach the domain gives none
        var heard = DomainsHeardAt.SetItems(reported.Where(d => d.Active || hostId is null).GroupBy(d => d.Id)
            .Select(g => KeyValuePair.Create(g.Key, g.Last().FiguresAt(at)))
            .Where(figures => !DomainsHeardAt.TryGetValue(figures.Key, out var before) || figures.Value > before));
        return this with { Domains = merged.ToValueList(), DomainsHeardAt = heard };
    }

    /// <summary>
    /// A domain as <paramref name="hostId"/>'s report leaves it: that host joins or leaves the hosts that cannot reach it, and
    /// the domain is active only while no host's last report says it cannot (last-writer-wins would let a host that reaches
    /// it hide one that does not, and a move to it from there fail at its first step). A report from a host that cannot
    /// reach it keeps the figures a host that can gave. A report without a host (journals from before) is taken as it is.
    /// </summary>
    /// <param name="newest">Whether the report is at least as new as the figures known (<see cref="IsNewest"/>): an older one
    /// changes only who reaches the domain.</param>
    public static DomainReport MergeDomain(DomainReport? known, DomainReport reported, string? hostId, bool newest)
    {
        var unreachable = (known?.UnreachableFrom ?? ValueList<string>.Empty).ToImmutableSortedSet(StringComparer.Ordinal);
        if (hostId is not null) unreachable = reported.Active ? unreachable.Remove(hostId) : unreachable.Add(hostId);
        var figures = known is null || (newest && (reported.Active || hostId is null)) ? reported : known;
        return figures with
        {
            Active = unreachable.IsEmpty && (hostId is not null || reported.Active),
            UnreachableFrom = unreachable.IsEmpty ? null : unreachable.ToValueList(),
            CountedAt = null, // its time is kept in DomainsHeardAt
        };
    }

    /// <summary>Whether a report made at <paramref name="at"/> is at least as new as the figures known of the domain.</summary>
    public bool IsNewest(DomainId domain, DateTimeOffset at) => !DomainsHeardAt.TryGetValue(domain, out var heard) || at >= heard;

    /// <summary>
    /// A host's unchanged report: only its last-heard time moves. Not journaled (hosts resend the same report
    /// often), so after a recovery a host's last report is its last change until it reports again.
    /// </summary>
    public InventoryState Heard(string hostId, DateTimeOffset at) =>
        Hosts.TryGetValue(hostId, out var host) && at > host.LastReport
            ? this with { Hosts = Hosts.SetItem(hostId, host with { LastReport = at }) }
            : this;

    /// <summary>Whether the newest report of a host running the disk shows its whole chain on <paramref name="domain"/>.</summary>
    public bool ReportedWhollyOn(ImageId image, DomainId domain) =>
        Hosts.Values.OrderByDescending(h => h.LastReport)
            .SelectMany(h => h.Vms.Where(v => v.Running).SelectMany(v => v.Drives))
            .FirstOrDefault(d => d.Image == image) is { Chain.Count: > 0 } drive && drive.Chain.All(l => l.Domain == domain);

    /// <summary>
    /// The host that runs the VM: a host reporting it running wins over one listing it stopped (a VM restarted
    /// elsewhere), then the freshest report. Null when no host lists it.
    /// </summary>
    public string? Locate(VmId vm) => Find(vm)?.HostId;

    /// <summary>
    /// What the saga validates a request against: the VM with every disk (domain = the drive's leaf domain,
    /// size = allocated bytes, what a copy moves), every domain (free = the SPM's available bytes; active unless the VM's
    /// host or an SPM-capable host cannot reach it), and which
    /// of <paramref name="images"/> (all reserved disks when none are named) another migration holds.
    /// </summary>
    public ValidationFacts FactsFor(VmId vm, IReadOnlyCollection<ImageId> images, DateTimeOffset? now = null)
    {
        var vmFacts = Find(vm) is { } found
            ? new VmFacts(vm, found.Vm.Running, found.Vm.Drives
                // a drive whose chain the host could not resolve is not a disk the saga can move
                .Where(d => d.LeafDomain is not null)
                .Select(d => new DiskFacts(d.Image, d.LeafDomain!.Value, d.AllocatedBytes, d.Chain[^1].Volume,
                    d.Chain.Select(v => v.Domain).Where(x => x != d.LeafDomain).Distinct().ToValueList() is { Count: > 0 } others ? others : null))
                .ToValueList())
            : null;
        // A domain some host cannot reach is refused only when that host takes part in the move: the VM's host (its mirror)
        // or a host that may hold the SPM (the layer copies). Another host's mount does not hold up this VM's move, and a
        // host gone for good that last reported the domain unreachable does not hold up every move to it for ever.
        var vmHost = Find(vm)?.HostId;
        bool TakesPart(string host) => host == vmHost || (Hosts.TryGetValue(host, out var known) && known.SpmCapable);
        var domains = Domains.Select(d => d.UnreachableFrom is { Count: > 0 } unreachable
            ? unreachable.Where(TakesPart).ToValueList() is { Count: > 0 } blocking
                ? new DomainFacts(d.Id, false, d.AvailableBytes, blocking, d.Name)
                : new DomainFacts(d.Id, true, d.AvailableBytes, Name: d.Name)
            : new DomainFacts(d.Id, d.Active, d.AvailableBytes, Name: d.Name)).ToValueList();
        var busy = Reservations.Keys.Concat(Settling.Keys.Where(i => now is not { } at || SettlingAfter(i, at) is not null)).Distinct()
            .Where(i => images.Count == 0 || images.Contains(i))
            .OrderBy(i => i.Value)
            .ToValueList();
        return new ValidationFacts(vmFacts, domains, busy);
    }

    /// <summary>Everything, in a stable order; also the form the state is snapshotted in.</summary>
    public InventorySnapshot Snapshot() => new(
        Hosts.Values.Select(h => new HostEntry(h.HostId, h.Address, h.SpmCapable, h.LastReport)).ToValueList(),
        Domains,
        Hosts.Values.SelectMany(h => h.Vms.Select(v => new VmEntry(h.HostId, v))).ToValueList(),
        Reservations.OrderBy(r => r.Key.Value).Select(r => new DiskReservation(r.Key, r.Value)).ToValueList());

    public static InventoryState FromSnapshot(InventorySnapshot snapshot)
    {
        var vmsByHost = snapshot.Vms.GroupBy(v => v.HostId).ToDictionary(g => g.Key, g => g.Select(v => v.Vm).ToValueList());
        var hosts = snapshot.Hosts.Select(h => new HostRecord(
            h.HostId, h.Address, h.SpmCapable, vmsByHost.GetValueOrDefault(h.HostId, ValueList<VmReport>.Empty), h.LastReport));
        return Empty with
        {
            Hosts = Empty.Hosts.SetItems(hosts.Select(h => KeyValuePair.Create(h.HostId, h))),
            Domains = snapshot.Domains,
            Reservations = Empty.Reservations.SetItems(snapshot.Reservations.Select(r => KeyValuePair.Create(r.Image, r.Migration))),
        };
    }

    private (string HostId, VmReport Vm)? Find(VmId vm) =>
        Hosts.Values
            .SelectMany(h => h.Vms.Where(v => v.Id == vm).Select(v => (Host: h, Vm: v)))
            .OrderByDescending(x => x.Vm.Running)
            .ThenByDescending(x => x.Host.LastReport)
            .Select(x => ((string HostId, VmReport Vm)?)(x.Host.HostId, x.Vm))
            .FirstOrDefault();
}
