using LiveMigration.Coordinator.Inventory;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;
using LiveMigration.Shared.Protocol;

namespace LiveMigration.Coordinator.Tests.Inventory;

public sealed class InventoryStateTests
{
    private readonly InventoryFixtures _pool = new();
    private static readonly DateTimeOffset T0 = InventoryFixtures.T0;

    private static InventoryState Reported(InventoryState state, HostStatusReport report)
    {
        var decision = InventoryDecider.Decide(state, report);
        var next = decision.Event is { } e ? state.Apply(e) : state;
        return decision.Chain is { } chain ? next.Chained(report.HostId, chain, report.At) : next;
    }

    private static InventoryState Reported(InventoryState state, DomainStatusReport report) =>
        InventoryDecider.Decide(state, report) is { } e ? state.Apply(e) : state;

    private InventoryState Pool() =>
        Reported(Reported(InventoryState.Empty, _pool.HostReport("host-1", T0, _pool.VmReport())), _pool.DomainReport());

    private static (InventoryState State, InventoryDecision Decision) Run(InventoryState state, ReserveDisks reserve)
    {
        var decision = InventoryDecider.Decide(state, reserve, T0);
        return (decision.Event is { } e ? state.Apply(e) : state, decision);
    }

    [Fact]
    public void Reports_build_hosts_vms_and_domains()
    {
        var state = Reported(Pool(), _pool.HostReport("host-2", T0));

        var snapshot = state.Snapshot();
        Assert.Equal(["host-1", "host-2"], snapshot.Hosts.Select(h => h.HostId));
        Assert.True(snapshot.Hosts[0].SpmCapable);
        var vm = Assert.Single(snapshot.Vms);
        Assert.Equal("host-1", vm.HostId);
        Assert.Equal(_pool.VmReport(), vm.Vm);
        Assert.Equal([_pool.DomainA, _pool.DomainB], snapshot.Domains.Select(d => d.Id));
        Assert.Empty(snapshot.Reservations);
    }

    [Fact]
    public void Validation_facts_of_a_vm_on_host_1_give_each_disk_its_leaf_domain_and_allocated_size_and_each_domain_its_free_space()
    {
        var facts = Pool().FactsFor(_pool.Vm, [_pool.Disk]);

        var vm = Assert.IsType<VmFacts>(facts.Vm);
        Assert.Equal(_pool.Vm, vm.Id);
        Assert.True(vm.Running);
        // the chain's base is on B, the leaf on A: the disk is where its leaf is
        // its base is on B (as an abandoned post-copy leaves a chain): named, so the saga refuses to plan from it
        Assert.Equal(new DiskFacts(_pool.Disk, _pool.DomainA, 3L << 30, _pool.DiskLeaf, [_pool.DomainB]), vm.Disks[0]);
        Assert.Equal(new DiskFacts(_pool.SecondDisk, _pool.DomainB, 1L << 30, _pool.SecondDiskLeaf), vm.Disks[1]);
        Assert.Equal([new DomainFacts(_pool.DomainA, true, 40L << 30, Name: "domain-a"), new DomainFacts(_pool.DomainB, true, 50L << 30, Name: "domain-b")], facts.Domains);
        Assert.Empty(facts.DisksInActiveMigrations);
    }

    [Fact]
    public void Validation_facts_of_an_unknown_vm_have_no_vm_but_still_the_domains()
    {
        var facts = Pool().FactsFor(VmId.New(), []);

        Assert.Null(facts.Vm);
        Assert.Equal(2, facts.Domains.Count);
    }

    [Fact]
    public void Validation_facts_list_the_requested_disks_another_migration_holds()
    {
        var (state, _) = Run(Pool(), new ReserveDisks(MigrationId.New(), _pool.Vm, [_pool.Disk]));

        Assert.Equal([_pool.Disk], state.FactsFor(_pool.Vm, [_pool.Disk, _pool.SecondDisk]).DisksInActiveMigrations);
        Assert.Empty(state.FactsFor(_pool.Vm, [_pool.SecondDisk]).DisksInActiveMigrations);
        // no disk named: every held disk
        Assert.Equal([_pool.Disk], state.FactsFor(_pool.Vm, []).DisksInActiveMigrations);
    }

    [Fact]
    public void Locate_names_the_host_that_runs_the_vm_and_prefers_a_running_copy_over_a_stopped_one()
    {
        var state = Pool();
        Assert.Equal("host-1", state.Locate(_pool.Vm));
        Assert.Null(state.Locate(VmId.New()));

        // host-2 lists it stopped, later: host-1 still runs it
        state = Reported(state, _pool.HostReport("host-2", T0.AddMinutes(1), _pool.VmReport(running: false)));
        Assert.Equal("host-1", state.Locate(_pool.Vm));

        // host-1 now lists it stopped and host-2 running: host-2 runs it
        state = Reported(state, _pool.HostReport("host-1", T0.AddMinutes(2), _pool.VmReport(running: false)));
        state = Reported(state, _pool.HostReport("host-2", T0.AddMinutes(2), _pool.VmReport(running: true)));
        Assert.Equal("host-2", state.Locate(_pool.Vm));
        Assert.True(state.FactsFor(_pool.Vm, []).Vm!.Running);
    }

    [Fact]
    public void A_report_that_changes_nothing_is_no_event_but_moves_the_last_heard_time()
    {
        var state = Pool();

        Assert.Null(InventoryDecider.Decide(state, _pool.HostReport("host-1", T0.AddMinutes(5), _pool.VmReport())).Event);
        Assert.Null(InventoryDecider.Decide(state, _pool.DomainReport(at: T0.AddMinutes(5))));
        Assert.Equal(T0.AddMinutes(5), state.Heard("host-1", T0.AddMinutes(5)).Hosts["host-1"].LastReport);
        // a late copy of an older report moves nothing back
        Assert.Equal(T0.AddMinutes(5), state.Heard("host-1", T0.AddMinutes(5)).Heard("host-1", T0).Hosts["host-1"].LastReport);
    }

    [Fact]
    public void A_changed_report_replaces_the_hosts_vms_and_an_older_one_arriving_late_is_ignored()
    {
        var state = Pool();
        var stopped = _pool.HostReport("host-1", T0.AddMinutes(1), _pool.VmReport(running: false));

        var change = Assert.IsType<HostReported>(InventoryDecider.Decide(state, stopped).Event);
        state = state.Apply(change);
        Assert.False(state.Hosts["host-1"].Vms[0].Running);

        Assert.Null(InventoryDecider.Decide(state, _pool.HostReport("host-1", T0, _pool.VmReport())).Event);
    }

    [Fact]
    public void A_host_not_heard_from_keeps_its_vms()
    {
        var state = Reported(Pool(), _pool.HostReport("host-2", T0.AddHours(3)));

        Assert.Equal("host-1", state.Locate(_pool.Vm));
        Assert.Equal(2, state.Hosts.Count);
    }

    [Fact]
    public void A_domain_report_replaces_the_domains()
    {
        var state = Reported(Pool(), _pool.DomainReport(freeOnB: 1L << 30, bActive: false));

        Assert.Equal(new DomainFacts(_pool.DomainB, false, 1L << 30, Name: "domain-b"), state.FactsFor(_pool.Vm, []).Domains[1]);
    }

    [Fact]
    public void Reserving_takes_every_disk_and_repeating_it_for_the_same_migration_changes_nothing()
    {
        var migration = MigrationId.New();
        var reserve = new ReserveDisks(migration, _pool.Vm, [_pool.Disk, _pool.SecondDisk]);

        var (state, first) = Run(Pool(), reserve);
        Assert.Equal(new DisksReserved(migration), first.Reply);
        var taken = Assert.IsType<DisksReservedForMigration>(first.Event);
        Assert.Equal([_pool.Disk, _pool.SecondDisk], taken.Images);
        Assert.Equal([new DiskReservation(_pool.Disk, migration), new DiskReservation(_pool.SecondDisk, migration)],
            state.Snapshot().Reservations.OrderBy(r => r.Image == _pool.SecondDisk));

        var (again, second) = Run(state, reserve);
        Assert.Equal(new DisksReserved(migration), second.Reply);
        Assert.Null(second.Event);
        Assert.Equal(state.Snapshot(), again.Snapshot());
    }

    [Fact]
    public void Reserving_is_all_or_nothing_and_names_the_disk_another_migration_holds()
    {
        var holder = MigrationId.New();
        var latecomer = MigrationId.New();
        var (state, _) = Run(Pool(), new ReserveDisks(holder, _pool.Vm, [_pool.SecondDisk]));

        var (after, refused) = Run(state, new ReserveDisks(latecomer, _pool.Vm, [_pool.Disk, _pool.SecondDisk]));

        Assert.Equal(new DisksBusy(latecomer, _pool.SecondDisk, holder), refused.Reply);
        Assert.Null(refused.Event);
        // the free disk was not taken either
        Assert.Equal([new DiskReservation(_pool.SecondDisk, holder)], after.Snapshot().Reservations);
    }

    [Fact]
    public void Releasing_frees_only_that_migrations_disks_and_releasing_again_is_harmless()
    {
        var first = MigrationId.New();
        var second = MigrationId.New();
        var (state, _) = Run(Pool(), new ReserveDisks(first, _pool.Vm, [_pool.Disk]));
        (state, _) = Run(state, new ReserveDisks(second, _pool.Vm, [_pool.SecondDisk]));

        var release = InventoryDecider.Decide(state, new ReleaseDisks(first), T0);
        Assert.Equal(new DisksReleased(first), release.Reply);
        Assert.Equal([_pool.Disk], Assert.IsType<DisksReleasedByMigration>(release.Event).Images);
        state = state.Apply(release.Event!);
        Assert.Equal([new DiskReservation(_pool.SecondDisk, second)], state.Snapshot().Reservations);

        var again = InventoryDecider.Decide(state, new ReleaseDisks(first), T0);
        Assert.Equal(new DisksReleased(first), again.Reply);
        Assert.Null(again.Event);

        // the freed disk can be taken by another migration now
        var (_, retaken) = Run(state, new ReserveDisks(MigrationId.New(), _pool.Vm, [_pool.Disk]));
        Assert.IsType<DisksReserved>(retaken.Reply);
    }

    [Fact]
    public void The_snapshot_rebuilds_the_same_state()
    {
        var (state, _) = Run(Reported(Pool(), _pool.HostReport("host-2", T0)), new ReserveDisks(MigrationId.New(), _pool.Vm, [_pool.Disk]));

        var rebuilt = InventoryState.FromSnapshot(state.Snapshot());

        Assert.Equal(state.Snapshot(), rebuilt.Snapshot());
        Assert.Equal(state.FactsFor(_pool.Vm, []), rebuilt.FactsFor(_pool.Vm, []));
        // host-2 reports no VM and is still known after the rebuild
        Assert.Empty(rebuilt.Hosts["host-2"].Vms);
    }

    // ---------------------------------------------------------------- a host gone for good

    [Fact]
    public void A_forgotten_host_takes_its_vms_and_its_word_on_unreachable_domains_with_it()
    {
        var state = Reported(Pool(), _pool.HostReport("host-2", T0));
        state = Host2CannotReachB(state, T0.AddSeconds(1));
        Assert.False(state.Domains[1].Active);

        var decision = InventoryDecider.Decide(state, new ForgetHost("host-2"), T0.AddSeconds(2));

        Assert.Equal(new HostForgetAnswer("host-2", 0), decision.Reply);
        state = state.Apply(Assert.IsType<HostForgotten>(decision.Event));
        Assert.Equal(["host-1"], state.Hosts.Keys);
        Assert.True(state.Domains[1].Active);
        Assert.Null(state.Domains[1].UnreachableFrom);
        // forgetting it again changes nothing and is not refused
        var again = InventoryDecider.Decide(state, new ForgetHost("host-2"), T0.AddSeconds(3));
        Assert.Null(again.Event);
        Assert.Null(((HostForgetAnswer)again.Reply).RefusalCode);
    }

    [Fact]
    public void A_host_that_reported_since_it_was_checked_is_not_forgotten_and_one_known_only_by_its_word_on_a_domain_is()
    {
        var state = Reported(Pool(), _pool.HostReport("host-2", T0));
        var checkedAt = state.Hosts["host-2"].LastReport;
        state = state.Heard("host-2", T0.AddSeconds(5)); // it came back meanwhile

        var late = InventoryDecider.Decide(state, new ForgetHost("host-2", state.Hosts["host-2"].Address, checkedAt), T0.AddSeconds(6));
        Assert.Null(late.Event);
        Assert.Equal(ErrorCodes.Conflict, ((HostForgetAnswer)late.Reply).RefusalCode);

        // forgotten, and then a late report of its domains names it again: forgetting it again clears that too
        state = state.Apply(InventoryDecider.Decide(state, new ForgetHost("host-2"), T0.AddSeconds(7)).Event!);
        state = Host2CannotReachB(state, T0.AddSeconds(8));
        Assert.False(state.Domains[1].Active);
        state = state.Apply(InventoryDecider.Decide(state, new ForgetHost("host-2"), T0.AddSeconds(9)).Event!);
        Assert.True(state.Domains[1].Active);
    }

    [Fact]
    public void A_host_whose_vm_has_a_disk_in_a_migration_is_not_forgotten()
    {
        var migration = MigrationId.New();
        var (state, _) = Run(Pool(), new ReserveDisks(migration, _pool.Vm, [_pool.Disk]));

        var decision = InventoryDecider.Decide(state, new ForgetHost("host-1"), T0.AddSeconds(1));

        Assert.Null(decision.Event);
        var answer = Assert.IsType<HostForgetAnswer>(decision.Reply);
        Assert.Equal(ErrorCodes.Conflict, answer.RefusalCode);
        Assert.Contains(migration.ToString(), answer.RefusalMessage);
        Assert.Equal("host-1", state.Locate(_pool.Vm));
    }

    [Fact]
    public void A_reservation_for_a_vm_whose_host_was_forgotten_since_its_facts_were_read_is_refused()
    {
        // The start read the facts while host-1 listed the VM; the forget landed before the reservation.
        var state = Pool();
        state = state.Apply(InventoryDecider.Decide(state, new ForgetHost("host-1"), T0.AddSeconds(1)).Event!);

        var decision = InventoryDecider.Decide(state, new ReserveDisks(MigrationId.New(), _pool.Vm, [_pool.Disk]), T0.AddSeconds(2));

        Assert.Null(decision.Event);
        var refused = Assert.IsType<DisksNotReserved>(decision.Reply);
        Assert.Equal(ErrorCodes.VmNotFound, refused.Code);
        Assert.Contains(_pool.Vm.ToString(), refused.Message);
        Assert.Empty(state.Reservations);
    }

    // ---------------------------------------------------------------- domains: merged by id, never lost to a host that has not attached them

    [Fact]
    public void A_host_that_has_not_attached_a_new_domain_yet_does_not_make_it_vanish()
    {
        var sdA = new DomainReport(DomainId.New(), "sdA", "file", 4L << 30, 0, 4L << 30, Active: true);
        var sdB = new DomainReport(DomainId.New(), "sdB", "file", 4L << 30, 0, 4L << 30, Active: true);
        // host-1 attached both; host-2 reports a moment later what it had attached before the SPM's announcement reached it
        var state = Reported(InventoryState.Empty, new DomainStatusReport([sdA, sdB], T0, "host-1"));
        state = Reported(state, new DomainStatusReport([sdB], T0.AddSeconds(1), "host-2"));
        state = Reported(state, new DomainStatusReport([], T0.AddSeconds(2), "host-3"));

        Assert.Equal(["sdA", "sdB"], state.Snapshot().Domains.Select(d => d.Name));
        Assert.Equal(2, state.FactsFor(VmId.New(), []).Domains.Count);
    }

    [Fact]
    public void A_domain_takes_its_figures_from_the_newest_report_and_a_late_older_report_does_not_undo_them()
    {
        var sd = new DomainReport(DomainId.New(), "sd", "file", 4L << 30, 0, 4L << 30, Active: true);
        var used = sd with { UsedBytes = 1L << 30, AvailableBytes = 3L << 30 };
        var state = Reported(InventoryState.Empty, new DomainStatusReport([sd], T0, "host-1"));
        state = Reported(state, new DomainStatusReport([used], T0.AddSeconds(2), "host-1"));
        // built before the volume was made, delivered after
        Assert.Null(InventoryDecider.Decide(state, new DomainStatusReport([sd], T0.AddSeconds(1), "host-2")));

        Assert.Equal(used, Assert.Single(state.Domains));
        // the same figures again: nothing to journal
        Assert.Null(InventoryDecider.Decide(state, new DomainStatusReport([used], T0.AddSeconds(3), "host-2")));
    }

    [Fact]
    public void A_hosts_count_kept_from_before_another_hosts_newer_count_does_not_undo_it_though_its_report_is_newer()
    {
        // hosts report a file domain's used bytes from a count up to a few seconds old: the figures' time is the count's
        var sd = new DomainReport(DomainId.New(), "sd", "file", 4L << 30, 1L << 30, 3L << 30, Active: true);
        var state = Reported(InventoryState.Empty, new DomainStatusReport([sd with { CountedAt = T0 }], T0, "host-2"));
        // the SPM on host-1 deleted a disk there and counted at once
        var freed = sd with { UsedBytes = 0, AvailableBytes = 4L << 30 };
        state = Reported(state, new DomainStatusReport([freed with { CountedAt = T0.AddSeconds(5) }], T0.AddSeconds(5), "host-1"));
        // host-2 reports later, still with its count from before the delete
        Assert.Null(InventoryDecider.Decide(state, new DomainStatusReport([sd with { CountedAt = T0 }], T0.AddSeconds(6), "host-2")));
        Assert.Equal(freed, Assert.Single(state.Domains)); // the count's time is not kept in the view

        // its next count is newer: taken
        var grown = sd with { UsedBytes = 2L << 30, AvailableBytes = 2L << 30 };
        state = Reported(state, new DomainStatusReport([grown with { CountedAt = T0.AddSeconds(8) }], T0.AddSeconds(8), "host-2"));
        Assert.Equal(grown, Assert.Single(state.Domains));
    }

    // Until 2026-12-06 the newest report of a domain decided whether it was active: a host that reached it, reporting after
    // one that could not (unmounted there), made it active again, and a move to it from that host failed at its first step.
    [Fact]
    public void A_domain_one_host_cannot_reach_stays_inactive_whatever_the_others_report_until_that_host_reaches_it_again()
    {
        var sd = new DomainReport(DomainId.New(), "sd", "file", 4L << 30, 1L << 30, 3L << 30, Active: true);
        var unmounted = sd with { AvailableBytes = 0, Active = false };
        var state = Reported(InventoryState.Empty, new DomainStatusReport([sd], T0, "host-1"));
        state = Reported(state, new DomainStatusReport([sd], T0.AddSeconds(1), "host-2"));

        state = Reported(state, new DomainStatusReport([unmounted], T0.AddSeconds(2), "host-2"));
        // host-1 still reaches it and says so later, with new figures: they are taken, the domain stays inactive
        var used = sd with { UsedBytes = 2L << 30, AvailableBytes = 2L << 30 };
        state = Reported(state, new DomainStatusReport([used], T0.AddSeconds(3), "host-1"));
        Assert.Equal(used with { Active = false, UnreachableFrom = ["host-2"] }, Assert.Single(state.Domains));
        // host-2's same report again changes nothing; the domain's figures are host-1's, not the zero host-2 sends
        Assert.Null(InventoryDecider.Decide(state, new DomainStatusReport([unmounted], T0.AddSeconds(4), "host-2")));
        Assert.Equal(used with { Active = false, UnreachableFrom = ["host-2"] }, Assert.Single(state.Domains));
        // a rebuild from the snapshot keeps who cannot reach it
        Assert.Equal(state.Domains, InventoryState.FromSnapshot(state.Snapshot()).Domains);

        // host-2 reaches it again: active, even with a report older than host-1's last figures
        var change = InventoryDecider.Decide(state, new DomainStatusReport([sd], T0.AddSeconds(2.5), "host-2"));
        Assert.NotNull(change);
        state = state.Apply(change);
        Assert.True(Assert.Single(state.Domains).Active);
        Assert.Null(Assert.Single(state.Domains).UnreachableFrom);
    }

    [Fact]
    public void A_domain_only_a_host_outside_the_move_cannot_reach_does_not_refuse_the_move()
    {
        // the VM runs on host-1 (SPM-capable); host-2 (not SPM-capable) cannot reach domain B
        var state = Reported(Pool(), _pool.HostReport("host-2", T0));
        state = Host2CannotReachB(state, T0.AddSeconds(1));
        Assert.False(state.Domains[1].Active);

        Assert.Equal(new DomainFacts(_pool.DomainB, true, 50L << 30, Name: "domain-b"), state.FactsFor(_pool.Vm, []).Domains[1]);
        // a VM on host-2 is refused, naming it
        var onHost2 = VmOn(ref state, "host-2");
        Assert.Equal(new DomainFacts(_pool.DomainB, false, 50L << 30, ["host-2"], "domain-b"), state.FactsFor(onHost2, []).Domains[1]);
    }

    [Fact]
    public void A_host_that_no_longer_names_a_domain_still_holds_it_inactive_until_it_reaches_it()
    {
        var sd = new DomainReport(DomainId.New(), "sd", "file", 4L << 30, 0, 4L << 30, Active: true);
        var state = Reported(InventoryState.Empty, new DomainStatusReport([sd], T0, "host-1"));
        state = Reported(state, new DomainStatusReport([sd with { Active = false }], T0.AddSeconds(1), "host-2"));

        // host-2 started again while the domain was unmounted and did not attach it: it cannot use it, and its report no
        // longer names it (a review found that clearing it then admitted a move from host-2 that failed at its first step)
        state = Reported(state, new DomainStatusReport([], T0.AddSeconds(2), "host-2"));

        Assert.Equal(["host-2"], Assert.Single(state.Domains).UnreachableFrom!);
        state = Reported(state, new DomainStatusReport([sd], T0.AddSeconds(3), "host-2"));
        Assert.True(Assert.Single(state.Domains).Active);
    }

    /// <summary>host-2 reports domain B, and only B, as not reachable from it (unmounted there).</summary>
    private InventoryState Host2CannotReachB(InventoryState state, DateTimeOffset at)
    {
        var report = _pool.DomainReport(bActive: false, at: at) with { HostId = "host-2" };
        return Reported(state, report with { Domains = [report.Domains[1]] });
    }

    /// <summary>A running VM reported by <paramref name="host"/> alone.</summary>
    private VmId VmOn(ref InventoryState state, string host)
    {
        var vm = _pool.VmReport() with { Id = VmId.New() };
        state = Reported(state, _pool.HostReport(host, T0.AddSeconds(2), vm));
        return vm.Id;
    }

    [Fact]
    public void A_domain_two_hosts_cannot_reach_is_active_again_only_once_both_reach_it()
    {
        var sd = new DomainReport(DomainId.New(), "sd", "file", 4L << 30, 0, 4L << 30, Active: true);
        var unmounted = sd with { AvailableBytes = 0, Active = false };
        var state = Reported(InventoryState.Empty, new DomainStatusReport([sd], T0, "host-1"));
        state = Reported(state, new DomainStatusReport([unmounted], T0.AddSeconds(1), "host-1"));
        state = Reported(state, new DomainStatusReport([unmounted], T0.AddSeconds(2), "host-2"));
        Assert.Equal(["host-1", "host-2"], Assert.Single(state.Domains).UnreachableFrom!);

        state = Reported(state, new DomainStatusReport([sd], T0.AddSeconds(3), "host-1"));
        Assert.False(Assert.Single(state.Domains).Active);
        state = Reported(state, new DomainStatusReport([sd], T0.AddSeconds(4), "host-2"));
        Assert.True(Assert.Single(state.Domains).Active);
    }

    [Fact]
    public void A_domain_report_journals_only_the_domains_it_adds_or_changes()
    {
        var state = Pool();
        var newDomain = new DomainReport(DomainId.New(), "domain-c", "file", 1L << 30, 0, 1L << 30, Active: true);
        var report = _pool.DomainReport(freeOnB: 10L << 30, at: T0.AddMinutes(1));

        var change = InventoryDecider.Decide(state, report with { Domains = [.. report.Domains, newDomain] });

        Assert.NotNull(change);
        Assert.Equal([_pool.DomainB, newDomain.Id], change.Domains.Select(d => d.Id));
        var after = state.Apply(change);
        Assert.Equal([_pool.DomainA, _pool.DomainB, newDomain.Id], after.Domains.Select(d => d.Id));
        Assert.Equal(10L << 30, after.Domains[1].AvailableBytes);
    }

    [Fact]
    public void An_old_journal_whose_whole_list_events_dropped_a_domain_replays_to_every_domain_it_named()
    {
        var sdA = new DomainReport(DomainId.New(), "sdA", "file", 4L << 30, 0, 4L << 30, Active: true);
        var sdB = new DomainReport(DomainId.New(), "sdB", "file", 4L << 30, 0, 4L << 30, Active: true);

        var replayed = InventoryState.Empty
            .Apply(new DomainsReported([sdA, sdB], T0))
            .Apply(new DomainsReported([sdB], T0.AddSeconds(1)));

        Assert.Equal(["sdA", "sdB"], replayed.Domains.Select(d => d.Name));
    }

    // ---------------------------------------------------------------- a disk whose chain is empty

    [Fact]
    public void A_drive_with_an_empty_chain_has_no_domain_says_why_and_breaks_neither_facts_nor_the_api_json()
    {
        var broken = _pool.VmReport() with
        {
            Drives = [.. _pool.VmReport().Drives, new DriveReport(ImageId.New(), [], 1L << 30, 0)],
        };
        var state = Reported(Reported(InventoryState.Empty, _pool.HostReport("host-1", T0, broken)), _pool.DomainReport());

        var drive = broken.Drives[^1];
        Assert.Null(drive.LeafDomain);
        Assert.StartsWith("chain unresolved", drive.Unresolved);
        Assert.Null(broken.Drives[0].Unresolved);
        // the saga is told of the disks it can move
        Assert.Equal(2, state.FactsFor(_pool.Vm, []).Vm!.Disks.Count);
        // GET /api/inventory writes the snapshot with ASP.NET's web defaults (computed properties included)
        var json = System.Text.Json.JsonSerializer.Serialize(state.Snapshot(), System.Text.Json.JsonSerializerOptions.Web);
        Assert.Contains("chain unresolved", json);
    }

    [Fact]
    public void A_disk_a_finished_migration_moved_stays_busy_until_its_host_reports_it_in_its_new_place()
    {
        var moved = MigrationId.New();
        var (reserved, _) = Run(Pool(), new ReserveDisks(moved, _pool.Vm, [_pool.Disk]));
        // completed onto B, while host-1's last report still has the disk's leaf on A
        var release = InventoryDecider.Decide(reserved, new ReleaseDisks(moved, [new DiskPlace(_pool.Disk, _pool.DomainB)]), T0);
        var released = reserved.Apply(Assert.IsType<DisksReleasedByMigration>(release.Event));
        Assert.Empty(released.Reservations);

        // neither planned from the old report nor reserved: busy, and the answer says why
        Assert.Contains(_pool.Disk, released.FactsFor(_pool.Vm, [_pool.Disk]).DisksInActiveMigrations);
        var next = MigrationId.New();
        var (_, refused) = Run(released, new ReserveDisks(next, _pool.Vm, [_pool.Disk]));
        var busy = Assert.IsType<DisksBusy>(refused.Reply);
        Assert.Equal((moved, true), (busy.HeldBy, busy.Settling));
        Assert.Null(refused.Event);
        // a host that never reports it there does not hold it for good
        Assert.IsType<DisksReserved>(InventoryDecider.Decide(released, new ReserveDisks(next, _pool.Vm, [_pool.Disk]), T0 + InventoryState.SettleLimit).Reply);
        Assert.Empty(released.FactsFor(_pool.Vm, [_pool.Disk], T0 + InventoryState.SettleLimit).DisksInActiveMigrations);

        // a report still showing it on A (built before the switch, come late) changes nothing; one on B frees it
        var late = Reported(released, _pool.HostReport("host-1", T0.AddSeconds(1), _pool.VmReport() with { Name = "web-01 (late)" }));
        Assert.Contains(_pool.Disk, late.FactsFor(_pool.Vm, [_pool.Disk]).DisksInActiveMigrations);
        var onB = _pool.VmReport() with
        {
            Drives = [_pool.VmReport().Drives[0] with { Chain = [new VolumeRef(_pool.DomainB, VolumeId.New()), new VolumeRef(_pool.DomainB, _pool.DiskLeaf)] },
                _pool.VmReport().Drives[1]],
        };
        var settled = Reported(late, _pool.HostReport("host-1", T0.AddSeconds(2), onB));
        var facts = settled.FactsFor(_pool.Vm, [_pool.Disk]);
        Assert.Empty(facts.DisksInActiveMigrations);
        Assert.Equal(_pool.DomainB, facts.Vm!.Disks.Single(d => d.Image == _pool.Disk).Domain);
        var (taken, accepted) = Run(settled, new ReserveDisks(next, _pool.Vm, [_pool.Disk]));
        Assert.IsType<DisksReserved>(accepted.Reply);
        Assert.Equal(next, taken.Reservations[_pool.Disk]);
    }

    [Fact]
    public void A_disk_its_host_already_reports_in_place_is_free_at_once_when_its_migration_lets_go()
    {
        var rolledBack = MigrationId.New();
        var (reserved, _) = Run(Pool(), new ReserveDisks(rolledBack, _pool.Vm, [_pool.SecondDisk]));
        // rolled back: the disk is where it was, as host-1 reports it (its whole chain on B)
        var release = InventoryDecider.Decide(reserved, new ReleaseDisks(rolledBack, [new DiskPlace(_pool.SecondDisk, _pool.DomainB)]), T0);
        var released = reserved.Apply(Assert.IsType<DisksReleasedByMigration>(release.Event));
        Assert.Null(((DisksReleasedByMigration)release.Event!).Settling);
        Assert.Empty(released.FactsFor(_pool.Vm, [_pool.SecondDisk]).DisksInActiveMigrations);
    }

    [Fact]
    public void A_split_chain_made_whole_settles_only_once_its_host_reports_the_whole_chain_in_its_place()
    {
        // The fixture's first disk runs on a chain over B (its base) and A (the rest): a move to A made it whole.
        var whole = MigrationId.New();
        var (reserved, _) = Run(Pool(), new ReserveDisks(whole, _pool.Vm, [_pool.Disk]));
        var release = InventoryDecider.Decide(reserved, new ReleaseDisks(whole, [new DiskPlace(_pool.Disk, _pool.DomainA)]), T0);
        var released = reserved.Apply(Assert.IsType<DisksReleasedByMigration>(release.Event));
        // its leaf was on A all along: still busy until a report shows the base there too
        Assert.Equal([_pool.Disk], released.FactsFor(_pool.Vm, [_pool.Disk]).DisksInActiveMigrations);
        var onA = _pool.VmReport() with
        {
            Drives = [_pool.VmReport().Drives[0] with { Chain = [.. _pool.VmReport().Drives[0].Chain.Select(l => l with { Domain = _pool.DomainA })] },
                _pool.VmReport().Drives[1]],
        };
        var settled = Reported(released, _pool.HostReport("host-1", T0.AddSeconds(1), onA));
        Assert.Empty(settled.FactsFor(_pool.Vm, [_pool.Disk]).DisksInActiveMigrations);
    }
}
