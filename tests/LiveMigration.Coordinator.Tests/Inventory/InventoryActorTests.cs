using Akka.Actor;
using Akka.Configuration;
using Akka.Persistence;
using Akka.TestKit.Xunit2;
using LiveMigration.Coordinator.Inventory;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;
using LiveMigration.Shared.Protocol;
using LiveMigration.Shared.Serialization;

namespace LiveMigration.Coordinator.Tests.Inventory;

/// <summary>
/// The persistent inventory on the in-memory journal and snapshot store, with serialize-messages on so every
/// question and answer goes through the protocol serializer's binding.
/// </summary>
public sealed class InventoryActorTests() : TestKit(Config, nameof(InventoryActorTests))
{
    private static readonly Config Config = ConfigurationFactory.ParseString("""
        akka.actor.serialize-messages = on
        akka.persistence.journal.plugin = "akka.persistence.journal.inmem"
        akka.persistence.snapshot-store.plugin = "akka.persistence.snapshot-store.inmem"
        """).WithFallback(ProtocolSerialization.Hocon);

    private static readonly TimeSpan Wait = TimeSpan.FromSeconds(5);
    private readonly InventoryFixtures _pool = new();

    private IActorRef StartInventory(int snapshotEvery = 100) =>
        Sys.ActorOf(InventoryActor.Props(new InventoryOptions(PublishToCluster: false, snapshotEvery)));

    private void Stop(IActorRef inventory)
    {
        Watch(inventory);
        inventory.Tell(PoisonPill.Instance);
        ExpectTerminated(inventory, Wait);
        Unwatch(inventory);
    }

    private IActorRef StartReportedPool()
    {
        var inventory = StartInventory();
        inventory.Tell(_pool.HostReport("host-1", InventoryFixtures.T0, _pool.VmReport()), ActorRefs.NoSender);
        inventory.Tell(_pool.HostReport("host-2", InventoryFixtures.T0), ActorRefs.NoSender);
        inventory.Tell(_pool.DomainReport(), ActorRefs.NoSender);
        return inventory;
    }

    private T Ask<T>(IActorRef inventory, IInventoryMessage question)
    {
        inventory.Tell(question, TestActor);
        return ExpectMsg<T>(Wait);
    }

    /// <summary>What the journal holds for the inventory, read from the journal itself, not from the actor.</summary>
    private List<object> JournaledEvents()
    {
        var journal = Akka.Persistence.Persistence.Instance.Apply(Sys).JournalFor(null);
        journal.Tell(new ReplayMessages(1, long.MaxValue, long.MaxValue, InventoryActor.InventoryPersistenceId, TestActor));
        var events = new List<object>();
        while (true)
        {
            var message = ExpectMsg<object>(Wait);
            if (message is ReplayedMessage replayed) events.Add(replayed.Persistent.Payload);
            else if (message is RecoverySuccess) return events;
            else Assert.Fail($"the journal answered a replay with {message}");
        }
    }

    [Fact]
    public void Reports_sent_directly_build_the_inventory()
    {
        var inventory = StartReportedPool();

        var snapshot = Ask<InventorySnapshot>(inventory, new GetInventory());

        Assert.Equal(["host-1", "host-2"], snapshot.Hosts.Select(h => h.HostId));
        Assert.Equal([new VmEntry("host-1", _pool.VmReport())], snapshot.Vms);
        Assert.Equal(_pool.DomainReport().Domains, snapshot.Domains);
        Assert.Empty(snapshot.Reservations);
    }

    [Fact]
    public void Validation_facts_and_location_of_a_vm_on_host_1_with_its_disk_on_domain_a()
    {
        var inventory = StartReportedPool();

        var facts = Ask<ValidationFactsReply>(inventory, new GetValidationFacts(_pool.Vm, [_pool.Disk])).Facts;
        var location = Ask<VmLocation>(inventory, new LocateVm(_pool.Vm));
        var nowhere = Ask<VmLocation>(inventory, new LocateVm(VmId.New()));

        var vm = Assert.IsType<VmFacts>(facts.Vm);
        Assert.True(vm.Running);
        Assert.Equal(new DiskFacts(_pool.Disk, _pool.DomainA, 3L << 30, _pool.DiskLeaf, [_pool.DomainB]), vm.Disks[0]);
        Assert.Equal([new DomainFacts(_pool.DomainA, true, 40L << 30, Name: "domain-a"), new DomainFacts(_pool.DomainB, true, 50L << 30, Name: "domain-b")], facts.Domains);
        Assert.Empty(facts.DisksInActiveMigrations);
        Assert.Equal(new VmLocation(_pool.Vm, "host-1"), location);
        Assert.Null(nowhere.HostId);
    }

    [Fact]
    public void Reservations_are_atomic_refuse_a_busy_disk_repeat_harmlessly_and_release()
    {
        var inventory = StartReportedPool();
        var first = MigrationId.New();
        var second = MigrationId.New();

        Assert.Equal(new DisksReserved(first), Ask<object>(inventory, new ReserveDisks(first, _pool.Vm, [_pool.Disk])));
        Assert.Equal(new DisksReserved(first), Ask<object>(inventory, new ReserveDisks(first, _pool.Vm, [_pool.Disk])));
        Assert.Equal(new DisksBusy(second, _pool.Disk, first),
            Ask<object>(inventory, new ReserveDisks(second, _pool.Vm, [_pool.SecondDisk, _pool.Disk])));
        // nothing of the refused request was taken
        Assert.Equal([new DiskReservation(_pool.Disk, first)], Ask<InventorySnapshot>(inventory, new GetInventory()).Reservations);
        Assert.Equal([_pool.Disk],
            Ask<ValidationFactsReply>(inventory, new GetValidationFacts(_pool.Vm, [_pool.Disk, _pool.SecondDisk])).Facts.DisksInActiveMigrations);

        Assert.Equal(new DisksReleased(first), Ask<object>(inventory, new ReleaseDisks(first)));
        Assert.Equal(new DisksReleased(first), Ask<object>(inventory, new ReleaseDisks(first)));
        Assert.Equal(new DisksReserved(second), Ask<object>(inventory, new ReserveDisks(second, _pool.Vm, [_pool.SecondDisk, _pool.Disk])));

        // only the changes were journaled: three reports, a reservation, a release, a reservation
        Assert.Equal(
            [typeof(HostReported), typeof(HostReported), typeof(DomainsReported),
             typeof(DisksReservedForMigration), typeof(DisksReleasedByMigration), typeof(DisksReservedForMigration)],
            JournaledEvents().Select(e => e.GetType()));
    }

    [Fact]
    public void Commands_sent_back_to_back_are_decided_on_the_facts_still_being_journaled_and_answered_in_order()
    {
        // No wait between the requests: the second reservation and the release arrive while the first one is still on
        // its way to the journal, and each must be decided as if it were already there.
        var inventory = StartReportedPool();
        var first = MigrationId.New();
        var second = MigrationId.New();
        inventory.Tell(new ReserveDisks(first, _pool.Vm, [_pool.Disk]), TestActor);
        inventory.Tell(new ReserveDisks(second, _pool.Vm, [_pool.Disk]), TestActor);
        inventory.Tell(new ReserveDisks(first, _pool.Vm, [_pool.Disk]), TestActor);
        inventory.Tell(new GetInventory(), TestActor);
        inventory.Tell(new ReleaseDisks(first), TestActor);
        inventory.Tell(new ReserveDisks(second, _pool.Vm, [_pool.Disk]), TestActor);

        Assert.Equal(new DisksReserved(first), ExpectMsg<object>(Wait));
        Assert.Equal(new DisksBusy(second, _pool.Disk, first), ExpectMsg<object>(Wait));
        Assert.Equal(new DisksReserved(first), ExpectMsg<object>(Wait));
        Assert.Equal([new DiskReservation(_pool.Disk, first)], ExpectMsg<InventorySnapshot>(Wait).Reservations);
        Assert.Equal(new DisksReleased(first), ExpectMsg<object>(Wait));
        Assert.Equal(new DisksReserved(second), ExpectMsg<object>(Wait));
        // and what was answered is what the journal holds
        Assert.Equal(
            [typeof(HostReported), typeof(HostReported), typeof(DomainsReported),
             typeof(DisksReservedForMigration), typeof(DisksReleasedByMigration), typeof(DisksReservedForMigration)],
            JournaledEvents().Select(e => e.GetType()));
    }

    private sealed class ManualClock(DateTimeOffset now) : TimeProvider
    {
        public DateTimeOffset Now { get; set; } = now;
        public override DateTimeOffset GetUtcNow() => Now;
    }

    [Fact]
    public void A_report_that_only_moves_figures_counts_at_once_and_is_not_journaled_and_one_that_changes_more_is()
    {
        var clock = new ManualClock(InventoryFixtures.T0);
        var inventory = Sys.ActorOf(InventoryActor.Props(new InventoryOptions(PublishToCluster: false), clock));
        inventory.Tell(_pool.HostReport("host-1", InventoryFixtures.T0, _pool.VmReport()), ActorRefs.NoSender);
        inventory.Tell(_pool.DomainReport(), ActorRefs.NoSender);
        Ask<InventorySnapshot>(inventory, new GetInventory());
        var before = JournaledEvents();

        // the guest wrote: its disk allocates more; the domain it lives on has less free
        var grown = _pool.VmReport() with
        {
            Drives = _pool.VmReport().Drives.Select(d => d with { AllocatedBytes = d.AllocatedBytes + (256L << 20) }).ToValueList(),
        };
        inventory.Tell(_pool.HostReport("host-1", InventoryFixtures.T0.AddSeconds(5), grown), ActorRefs.NoSender);
        inventory.Tell(_pool.DomainReport(freeOnB: 49L << 30, at: InventoryFixtures.T0.AddSeconds(5)), ActorRefs.NoSender);
        var snapshot = Ask<InventorySnapshot>(inventory, new GetInventory());
        Assert.Equal([new VmEntry("host-1", grown)], snapshot.Vms);
        Assert.Equal(49L << 30, snapshot.Domains.Single(d => d.Id == _pool.DomainB).AvailableBytes);
        Assert.Equal(before.Count, JournaledEvents().Count);

        // a minute on, figures are journaled anyway (a recovery starts from figures at most that old): every VM whose
        // figures moved since they were last journaled, not only what this report moved
        clock.Now = InventoryFixtures.T0.AddSeconds(61);
        var grownMore = grown with { Drives = grown.Drives.Select((d, i) => i == 0 ? d with { AllocatedBytes = d.AllocatedBytes + 1 } : d).ToValueList() };
        inventory.Tell(_pool.HostReport("host-1", InventoryFixtures.T0.AddSeconds(61), grownMore), ActorRefs.NoSender);
        Ask<InventorySnapshot>(inventory, new GetInventory());
        var journaledFigures = Assert.IsType<HostVmsChanged>(Assert.Single(JournaledEvents().Skip(before.Count)));
        Assert.Equal([grownMore], journaledFigures.Upserted);

        // the VM stopped, and domain B cannot be reached: facts, journaled at once
        clock.Now = InventoryFixtures.T0.AddSeconds(70);
        inventory.Tell(_pool.HostReport("host-1", InventoryFixtures.T0.AddSeconds(70), grownMore with { Running = false }), ActorRefs.NoSender);
        inventory.Tell(_pool.DomainReport(freeOnB: 49L << 30, bActive: false, at: InventoryFixtures.T0.AddSeconds(70)), ActorRefs.NoSender);
        Ask<InventorySnapshot>(inventory, new GetInventory());
        Assert.Equal([typeof(HostVmsChanged), typeof(HostReported), typeof(DomainsReported)],
            JournaledEvents().Skip(before.Count).Select(e => e.GetType()));

        // recovered, it holds the journaled facts and figures
        Stop(inventory);
        var recovered = Ask<InventorySnapshot>(StartInventory(), new GetInventory());
        Assert.Equal([new VmEntry("host-1", grownMore with { Running = false })], recovered.Vms);
        Assert.False(recovered.Domains.Single(d => d.Id == _pool.DomainB).Active);
    }

    [Fact]
    public void A_repeated_identical_report_persists_nothing()
    {
        var inventory = StartReportedPool();
        Ask<InventorySnapshot>(inventory, new GetInventory());
        var before = JournaledEvents();

        inventory.Tell(_pool.HostReport("host-1", InventoryFixtures.T0.AddMinutes(1), _pool.VmReport()), ActorRefs.NoSender);
        inventory.Tell(_pool.DomainReport(at: InventoryFixtures.T0.AddMinutes(1)), ActorRefs.NoSender);
        var snapshot = Ask<InventorySnapshot>(inventory, new GetInventory());

        Assert.Equal(3, before.Count);
        Assert.Equal(before, JournaledEvents());
        // heard from, though: the last report time moved
        Assert.Equal(InventoryFixtures.T0.AddMinutes(1), snapshot.Hosts[0].LastReport);

        // a real change is journaled
        inventory.Tell(_pool.HostReport("host-1", InventoryFixtures.T0.AddMinutes(2), _pool.VmReport(running: false)), ActorRefs.NoSender);
        Ask<InventorySnapshot>(inventory, new GetInventory());
        Assert.IsType<HostReported>(JournaledEvents()[^1]);
        Assert.Equal(4, JournaledEvents().Count);
    }

    [Fact]
    public void A_restarted_inventory_recovers_the_same_inventory_and_keeps_the_reservations()
    {
        var inventory = StartReportedPool();
        var holder = MigrationId.New();
        Assert.IsType<DisksReserved>(Ask<object>(inventory, new ReserveDisks(holder, _pool.Vm, [_pool.Disk, _pool.SecondDisk])));
        var before = Ask<InventorySnapshot>(inventory, new GetInventory());

        Stop(inventory);
        var restarted = StartInventory();

        Assert.Equal(before, Ask<InventorySnapshot>(restarted, new GetInventory()));
        Assert.Equal(new VmLocation(_pool.Vm, "host-1"), Ask<VmLocation>(restarted, new LocateVm(_pool.Vm)));
        var latecomer = MigrationId.New();
        Assert.Equal(new DisksBusy(latecomer, _pool.Disk, holder), Ask<object>(restarted, new ReserveDisks(latecomer, _pool.Vm, [_pool.Disk])));
        Assert.Equal(new DisksReserved(holder), Ask<object>(restarted, new ReserveDisks(holder, _pool.Vm, [_pool.Disk])));
    }

    [Fact]
    public void Snapshots_are_taken_every_n_events_and_recovery_from_a_snapshot_and_the_events_after_it_gives_the_same_inventory()
    {
        var inventory = StartInventory(snapshotEvery: 2);
        inventory.Tell(_pool.HostReport("host-1", InventoryFixtures.T0, _pool.VmReport()), ActorRefs.NoSender);
        inventory.Tell(_pool.DomainReport(), ActorRefs.NoSender);
        inventory.Tell(_pool.HostReport("host-2", InventoryFixtures.T0), ActorRefs.NoSender);
        Assert.IsType<DisksReserved>(Ask<object>(inventory, new ReserveDisks(MigrationId.New(), _pool.Vm, [_pool.Disk])));
        // domain B out of reach: a fact (its figures alone would be volatile, see below)
        inventory.Tell(_pool.DomainReport(bActive: false), ActorRefs.NoSender);
        var before = Ask<InventorySnapshot>(inventory, new GetInventory());

        // five events: the newest snapshot is the one after the fourth
        var snapshots = Akka.Persistence.Persistence.Instance.Apply(Sys).SnapshotStoreFor(null);
        AwaitAssert(() =>
        {
            snapshots.Tell(new LoadSnapshot(InventoryActor.InventoryPersistenceId, SnapshotSelectionCriteria.Latest, long.MaxValue), TestActor);
            var loaded = ExpectMsg<LoadSnapshotResult>(Wait);
            Assert.Equal(4, loaded.Snapshot?.Metadata.SequenceNr);
        }, Wait);

        Stop(inventory);
        var restarted = StartInventory(snapshotEvery: 2);

        Assert.Equal(before, Ask<InventorySnapshot>(restarted, new GetInventory()));
    }

    [Fact]
    public void A_large_inventory_is_snapshotted_less_often_a_quarter_of_its_entries_apart()
    {
        var inventory = StartInventory(snapshotEvery: 2);
        // 40 VMs: a snapshot writes all of them, so they are taken 10 events apart, not 2
        var vms = Enumerable.Range(0, 40).Select(i => new VmReport(VmId.New(), $"vm-{i}", true, [])).ToArray();
        inventory.Tell(_pool.HostReport("host-1", InventoryFixtures.T0, vms), ActorRefs.NoSender);
        // domain B out of reach and back: each a fact
        for (var i = 1; i <= 12; i++)
            inventory.Tell(_pool.DomainReport(bActive: i % 2 == 0, at: InventoryFixtures.T0.AddSeconds(i)), ActorRefs.NoSender);
        var before = Ask<InventorySnapshot>(inventory, new GetInventory());
        Assert.Equal(40, before.Vms.Count);

        var snapshots = Akka.Persistence.Persistence.Instance.Apply(Sys).SnapshotStoreFor(null);
        // the snapshot is written after its event: asked for until it is there
        AwaitAssert(() =>
        {
            snapshots.Tell(new LoadSnapshot(InventoryActor.InventoryPersistenceId, SnapshotSelectionCriteria.Latest, long.MaxValue), TestActor);
            Assert.Equal(10, ExpectMsg<LoadSnapshotResult>(Wait).Snapshot?.Metadata.SequenceNr);
        }, Wait);

        Stop(inventory);
        Assert.Equal(before, Ask<InventorySnapshot>(StartInventory(snapshotEvery: 2), new GetInventory()));
    }

    [Fact]
    public void Every_report_is_acknowledged_once_handled_also_when_it_changes_nothing_or_is_older()
    {
        var inventory = StartInventory();
        var report = _pool.HostReport("host-1", InventoryFixtures.T0.AddMinutes(1), _pool.VmReport());

        inventory.Tell(report, TestActor);
        ExpectMsg(new ReportAcknowledged(ReportAcknowledged.HostReport, report.At), Wait);
        // the same report again (a re-send whose receipt was lost), and an older one: delivered, nothing new
        inventory.Tell(report, TestActor);
        ExpectMsg(new ReportAcknowledged(ReportAcknowledged.HostReport, report.At), Wait);
        inventory.Tell(_pool.HostReport("host-1", InventoryFixtures.T0, _pool.VmReport(running: false)), TestActor);
        ExpectMsg(new ReportAcknowledged(ReportAcknowledged.HostReport, InventoryFixtures.T0), Wait);
        var domains = _pool.DomainReport(at: InventoryFixtures.T0.AddMinutes(1));
        inventory.Tell(domains, TestActor);
        ExpectMsg(new ReportAcknowledged(ReportAcknowledged.DomainsReport, domains.At), Wait);
        inventory.Tell(domains, TestActor);
        ExpectMsg(new ReportAcknowledged(ReportAcknowledged.DomainsReport, domains.At), Wait);

        // once journaled: the first report and the domains, nothing for the repeats or the older report
        Assert.Equal([typeof(HostReported), typeof(DomainsReported)], JournaledEvents().Select(e => e.GetType()));
        Assert.True(Ask<InventorySnapshot>(inventory, new GetInventory()).Vms.Single().Vm.Running);
    }
}

