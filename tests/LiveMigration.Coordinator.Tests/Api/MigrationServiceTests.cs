using Akka.Actor;
using Akka.Hosting;
using Akka.TestKit.Xunit2;
using LiveMigration.Coordinator.Api;
using LiveMigration.Coordinator.Hosting;
using LiveMigration.Coordinator.Migration;
using LiveMigration.Coordinator.Tests.Migration;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;
using LiveMigration.Shared.Protocol;

namespace LiveMigration.Coordinator.Tests.Api;

/// <summary>The API's start of a migration against probes that play the inventory and the saga's shard region.</summary>
public sealed class MigrationServiceTests : TestKit
{
    private static readonly TimeSpan Wait = TimeSpan.FromSeconds(5);

    private sealed class Required<TKey>(IActorRef actor) : IRequiredActor<TKey>
    {
        public IActorRef ActorRef => actor;
        public Task<IActorRef> GetAsync(CancellationToken cancellationToken = default) => Task.FromResult(actor);
    }

    /// <summary>The service under test, with probes for the inventory and the region, and the next migration to start.</summary>
    private (MigrationService Service, MigrationCatalog Catalog, Akka.TestKit.TestProbe Inventory, Akka.TestKit.TestProbe Region, SagaDriver Next) Start()
    {
        var inventory = CreateTestProbe();
        var region = CreateTestProbe();
        var catalog = new MigrationCatalog(Sys);
        var service = new MigrationService(new Required<MigrationRegion>(region.Ref), new Required<InventoryProxy>(inventory.Ref), catalog);
        return (service, catalog, inventory, region, new SagaDriver());
    }

    [Fact]
    public void The_catalog_keeps_the_newest_finished_views_only_and_a_view_read_again_is_not_added_twice()
    {
        var catalog = new MigrationCatalog(Sys);
        var vm = VmId.New();
        MigrationView Finished(MigrationId id) => new(id, vm, "completed", true, MigrationStrategy.PreCopy, [], null, SagaDriver.T0, SagaDriver.T0, SagaDriver.T0);
        var ids = Enumerable.Range(0, MigrationCatalog.FinishedViewsKept + 3).Select(_ => MigrationId.New()).ToList();
        foreach (var id in ids)
        {
            catalog.Finished(Finished(id));
            catalog.Finished(Finished(id)); // read again: still one entry
        }

        Assert.All(ids.Take(3), id => Assert.Null(catalog.FinishedView(id)));
        Assert.All(ids.Skip(3), id => Assert.NotNull(catalog.FinishedView(id)));
        // a running migration's view is never kept
        var running = MigrationId.New();
        catalog.Finished(Finished(running) with { Status = "running", Finished = false });
        Assert.Null(catalog.FinishedView(running));
    }

    [Fact]
    public async Task A_start_refused_for_a_migration_that_has_just_finished_releases_its_disks_and_reserves_again()
    {
        // The previous move of the disk completed (its final view is known), but the releaser has not freed its disks yet:
        // a client that starts the next move on the news of the end must not be told the disk is still moving.
        var (service, catalog, inventory, region, next) = Start();
        var previous = MigrationId.New();
        var place = new DiskView(next.Image, next.Destination, next.Source, nameof(DiskPhase.Completed), null, 1, 1, 1, null, null, []);
        catalog.Finished(new MigrationView(previous, next.Vm, "completed", true, MigrationStrategy.PreCopy, [place], null,
            SagaDriver.T0, SagaDriver.T0, SagaDriver.T0));

        var start = service.StartAsync(next.Request());
        inventory.ExpectMsg<GetValidationFacts>(Wait);
        inventory.Reply(new ValidationFactsReply(next.Facts()));
        var first = inventory.ExpectMsg<ReserveDisks>(Wait);
        inventory.Reply(new DisksBusy(first.Migration, next.Image, previous));
        var release = inventory.ExpectMsg<ReleaseDisks>(Wait);
        Assert.Equal(previous, release.Migration);
        Assert.Equal([new DiskPlace(next.Image, next.Source)], release.Places!); // where the finished move left the disk
        inventory.Reply(new DisksReleased(previous));
        Assert.Equal(first.Migration, inventory.ExpectMsg<ReserveDisks>(Wait).Migration);
        inventory.Reply(new DisksReserved(first.Migration));
        region.ExpectMsg<StartMigration>(Wait);
        region.Reply(new MigrationCommandAccepted(first.Migration, nameof(StartMigration), "running"));

        var outcome = await start.WaitAsync(Wait);
        Assert.True(outcome.Accepted, outcome.Message);
    }

    [Fact]
    public async Task A_start_refused_for_a_migration_that_still_runs_is_refused_with_its_name()
    {
        var (service, catalog, inventory, region, next) = Start();
        var running = MigrationId.New();
        catalog.Requested(running);

        var start = service.StartAsync(next.Request());
        inventory.ExpectMsg<GetValidationFacts>(Wait);
        inventory.Reply(new ValidationFactsReply(next.Facts()));
        var reserve = inventory.ExpectMsg<ReserveDisks>(Wait);
        inventory.Reply(new DisksBusy(reserve.Migration, next.Image, running));
        // the service asks the saga whether it has finished: it has not
        region.ExpectMsg<GetMigrationState>(Wait);
        var view = new MigrationView(running, next.Vm, "running", false, MigrationStrategy.PreCopy, [], null, SagaDriver.T0, SagaDriver.T0, null);
        region.Reply(new MigrationStateReply(view, 3));

        var outcome = await start.WaitAsync(Wait);
        Assert.False(outcome.Accepted);
        Assert.Equal(MigrationErrorCodes.DiskBusy, outcome.Code);
        Assert.Contains(running.ToString(), outcome.Message);
        inventory.ExpectNoMsg(TimeSpan.FromMilliseconds(200)); // nothing released
    }

    [Fact]
    public async Task Facts_read_while_the_previous_migration_held_the_disk_are_read_again_once_the_disk_is_reserved()
    {
        // The facts were read while the disk's previous move still held it; its release came before the reservation, which
        // succeeded. The saga must validate against facts read after that, in which the disk is this migration's alone.
        var (service, _, inventory, region, next) = Start();
        var start = service.StartAsync(next.Request());
        inventory.ExpectMsg<GetValidationFacts>(Wait);
        inventory.Reply(new ValidationFactsReply(next.Facts() with { DisksInActiveMigrations = [next.Image] }));
        var reserve = inventory.ExpectMsg<ReserveDisks>(Wait);
        inventory.Reply(new DisksReserved(reserve.Migration));
        inventory.ExpectMsg<GetValidationFacts>(Wait);
        // now the inventory lists the disk as held by this migration's own reservation
        inventory.Reply(new ValidationFactsReply(next.Facts() with { DisksInActiveMigrations = [next.Image] }));
        var started = region.ExpectMsg<StartMigration>(Wait);
        Assert.Empty(started.Facts.DisksInActiveMigrations);
        region.Reply(new MigrationCommandAccepted(reserve.Migration, nameof(StartMigration), "running"));
        Assert.True((await start.WaitAsync(Wait)).Accepted);
    }
}
