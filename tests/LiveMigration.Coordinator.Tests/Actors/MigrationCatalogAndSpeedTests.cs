using Akka.Actor;
using Akka.TestKit;
using LiveMigration.Coordinator.Migration;
using LiveMigration.Coordinator.Tests.Migration;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;
using LiveMigration.Shared.Protocol;

namespace LiveMigration.Coordinator.Tests.Actors;

/// <summary>
/// The list of migrations read back from the SQLite journal (also by a new node on the same files, as after a
/// Coordinator restart), and a speed change reaching the HSM of a running mirror, on real persistence.
/// </summary>
public sealed class MigrationCatalogAndSpeedTests : IAsyncLifetime
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(20);
    private readonly string _dataDirectory = Path.Combine(Path.GetTempPath(), $"lsm-catalog-{Guid.NewGuid():N}");

    /// <summary>Hosts that are two probes: what the saga sends arrives there as it was sent.</summary>
    private sealed class ProbeHosts(TestProbe spm, TestProbe hsm) : IMigrationHosts
    {
        public IActorRef Spm => spm.Ref;
        public IActorRef? HsmFor(VmId vm) => hsm.Ref;
        public string? HostOf(VmId vm) => "host-1";
    }

    private static (IActorRef Saga, TestProbe Spm, TestProbe Hsm) Migration(ActorNode node, SagaDriver saga, IActorRef admission)
    {
        var spm = node.Kit.CreateTestProbe();
        var hsm = node.Kit.CreateTestProbe();
        var actor = node.System.ActorOf(MigrationActor.Props(saga.Id, new ProbeHosts(spm, hsm), admission, new MigrationActorSettings(TimeSpan.FromSeconds(30), 100)));
        actor.Tell(new StartMigration(saga.Id, saga.Request(bandwidth: 8_000_000), saga.Facts()), node.Kit.TestActor);
        node.Kit.ExpectMsg<MigrationCommandAccepted>(Patience);
        return (actor, spm, hsm);
    }

    private static ExecuteStep Answer(IActorRef saga, TestProbe host, MigrationStep expected)
    {
        var step = host.ExpectMsg<ExecuteStep>(Patience);
        Assert.Equal(expected, step.Operation.Step);
        saga.Tell(new OperationSucceeded(step.Operation, new StepOutcome(step.Disk.SizeBytes)), host.Ref);
        return step;
    }

    /// <summary>One migration completed, and another one step in (its StartReplication sent, not answered).</summary>
    private static void FinishOneAndStartAnother(ActorNode node, SagaDriver finished, SagaDriver running)
    {
        var admission = node.System.ActorOf(MigrationAdmission.Props(MigrationLimits.Default));
        var (saga, spm, hsm) = Migration(node, finished, admission);
        foreach (var step in MigrationPlan.ForwardSteps(MigrationStrategy.PreCopy, deleteSource: true))
            Answer(saga, MigrationPlan.RoleOf(step) == HostRole.Spm ? spm : hsm, step);
        var (other, otherSpm, _) = Migration(node, running, admission);
        Answer(other, otherSpm, MigrationStep.CloneImageStructure);
    }

    [Fact]
    public async Task The_catalog_lists_every_migration_from_the_journal_also_on_a_new_node_and_filters_the_active_ones()
    {
        var finished = new SagaDriver();
        var running = new SagaDriver();
        await using (var node = await ActorNode.StartAsync(_dataDirectory, serializeMessages: false))
        {
            FinishOneAndStartAnother(node, finished, running);
            await AwaitAsync(async () => (await new MigrationCatalog(node.System).ListAsync(activeOnly: false)).Any(v => v.Id == finished.Id && v.Finished));
        }

        await using var restarted = await ActorNode.StartAsync(_dataDirectory, serializeMessages: false);
        var catalog = new MigrationCatalog(restarted.System);
        var all = await catalog.ListAsync(activeOnly: false);
        Assert.Equal([running.Id, finished.Id], all.Select(v => v.Id)); // newest first
        Assert.Equal("completed", all[1].Status);
        Assert.Equal(finished.Vm, all[1].Vm);
        Assert.Equal(MigrationStep.StartReplication, Assert.Single(all[0].Disks).Step);
        var active = await catalog.ListAsync(activeOnly: true);
        Assert.Equal(running.Id, Assert.Single(active).Id);
    }

    [Fact]
    public async Task The_catalogs_read_table_outlives_a_restart_reads_on_from_its_offset_and_holds_only_what_is_unfinished()
    {
        var views = new MigrationViewOptions(Path.Combine(_dataDirectory, "migrations-view.db"), "sqlite:this-journal");
        var finished = new SagaDriver();
        var running = new SagaDriver();
        await using (var node = await ActorNode.StartAsync(_dataDirectory, serializeMessages: false))
        {
            FinishOneAndStartAnother(node, finished, running);
            var catalog = new MigrationCatalog(node.System, views);
            await AwaitAsync(async () => (await catalog.ListAsync(activeOnly: false)) is [{ Finished: false }, { Finished: true }]);
        }
        long offset;
        using (var store = new MigrationViewStore(views))
        {
            offset = store.Offset;
            Assert.True(offset > 0);
            // the finished one is a row on disk only; what a list folds into without reading is the running one
            Assert.Equal([running.Id], store.Unfinished().Select(r => r.State.Id));
            Assert.Equal("completed", MigrationCatalog.KindOf(store.Find(finished.Id)!.State.Status));
        }

        await using var restarted = await ActorNode.StartAsync(_dataDirectory, serializeMessages: false);
        var again = new MigrationCatalog(restarted.System, views);
        var all = await again.ListAsync(activeOnly: false);
        Assert.Equal([running.Id, finished.Id], all.Select(v => v.Id));
        Assert.Equal(["running", "completed"], all.Select(v => v.Status));
        Assert.True(await again.ExistsAsync(finished.Id));

        // the running one goes on after the restart: its new events fold into the row the table kept
        var spmAgain = restarted.Kit.CreateTestProbe();
        var hsmAgain = restarted.Kit.CreateTestProbe();
        var recovered = restarted.System.ActorOf(MigrationActor.Props(running.Id, new ProbeHosts(spmAgain, hsmAgain),
            restarted.System.ActorOf(MigrationAdmission.Props(MigrationLimits.Default)), new MigrationActorSettings(TimeSpan.FromSeconds(30), 100)));
        foreach (var step in MigrationPlan.ForwardSteps(MigrationStrategy.PreCopy, deleteSource: true).Skip(1))
            Answer(recovered, MigrationPlan.RoleOf(step) == HostRole.Spm ? spmAgain : hsmAgain, step);
        await AwaitAsync(async () => (await again.ListAsync(activeOnly: true)).Count == 0);
        Assert.All(await again.ListAsync(activeOnly: false), v => Assert.Equal("completed", v.Status));
        using (var store = new MigrationViewStore(views))
        {
            Assert.True(store.Offset > offset);
            Assert.Empty(store.Unfinished());
        }

        // a table read from another journal (the data directory now behind another database) is read again from the start
        var rebuilt = new MigrationCatalog(restarted.System, views with { Source = "sqlite:another-journal" });
        Assert.Equal([running.Id, finished.Id], (await rebuilt.ListAsync(activeOnly: false)).Select(v => v.Id));
    }

    [Fact]
    public async Task A_read_table_ahead_of_its_journal_is_read_again_and_a_row_that_missed_an_event_is_read_again_whole()
    {
        var views = new MigrationViewOptions(Path.Combine(_dataDirectory, "views", "migrations-view.db"), "sqlite:same-name");
        var elsewhere = new SagaDriver();
        await using (var node = await ActorNode.StartAsync(Path.Combine(_dataDirectory, "old"), serializeMessages: false))
        {
            Migration(node, elsewhere, node.System.ActorOf(MigrationAdmission.Props(MigrationLimits.Default)));
            using var catalog = new MigrationCatalog(node.System, views);
            Assert.Single(await catalog.ListAsync(activeOnly: false));
        }

        // A journal made anew under the same name (restored from an older backup, say): the table's offset is past its end.
        await using var fresh = await ActorNode.StartAsync(Path.Combine(_dataDirectory, "new"), serializeMessages: false);
        var admission = fresh.System.ActorOf(MigrationAdmission.Props(MigrationLimits.Default));
        var saga = new SagaDriver();
        var (actor, spm, hsm) = Migration(fresh, saga, admission);
        Answer(actor, spm, MigrationStep.CloneImageStructure);
        using (var catalog = new MigrationCatalog(fresh.System, views))
        {
            var listed = await catalog.ListAsync(activeOnly: false);
            Assert.Equal([saga.Id], listed.Select(v => v.Id)); // not the other journal's, nor this one's skipped
            Assert.Equal(MigrationStep.StartReplication, Assert.Single(listed[0].Disks).Step);
        }

        // A row that missed events (the all-events read passed one over): made to look so by hand
        using (var store = new MigrationViewStore(views))
            store.Write([new MigrationRow(MigrationState.Initial(saga.Id), 1)], store.Offset, store.LastRead);
        using var reopened = new MigrationCatalog(fresh.System, views);
        Answer(actor, hsm, MigrationStep.StartReplication); // its next event is several past the row's
        await AwaitAsync(async () => (await reopened.ListAsync(activeOnly: false)) is [{ Status: "running" } view]
                                     && view.Disks[0].Step != MigrationStep.StartReplication);
        var repaired = Assert.Single(await reopened.ListAsync(activeOnly: false));
        Assert.Equal(saga.Vm, repaired.Vm);
    }

    [Fact]
    public Task The_catalog_pages_newest_first_and_a_list_sees_what_was_journaled_since_the_last_one() =>
        CatalogPagesAndCatchesUp(() => ActorNode.StartAsync(_dataDirectory, serializeMessages: false));

    /// <summary>Also run on PostgreSQL (<see cref="Persistence.PostgresJournalTests"/>): the all-events query is the journal's own.</summary>
    internal static async Task CatalogPagesAndCatchesUp(Func<Task<ActorNode>> start)
    {
        await using var node = await start();
        var admission = node.System.ActorOf(MigrationAdmission.Props(new MigrationLimits(0, 0)));
        var catalog = new MigrationCatalog(node.System);
        Assert.Equal(0, (await catalog.PageAsync(activeOnly: false, 0, 10)).Total);

        var sagas = Enumerable.Range(0, 5).Select(_ => new SagaDriver()).ToList();
        var started = new List<(IActorRef Saga, TestProbe Spm, TestProbe Hsm)>();
        foreach (var saga in sagas)
        {
            started.Add(Migration(node, saga, admission));
            await Task.Delay(5); // distinct request times: the order below is the order of the requests
        }
        // the same catalog, read before: it reads on from where it stopped and sees all five at once (their start was answered)
        var first = await catalog.PageAsync(activeOnly: false, 0, 2);
        Assert.Equal(5, first.Total);
        Assert.Equal([sagas[4].Id, sagas[3].Id], first.Migrations.Select(v => v.Id));
        var second = await catalog.PageAsync(activeOnly: false, 2, 2);
        Assert.Equal([sagas[2].Id, sagas[1].Id], second.Migrations.Select(v => v.Id));
        var last = await catalog.PageAsync(activeOnly: false, 4, 2);
        Assert.Equal([sagas[0].Id], last.Migrations.Select(v => v.Id));
        Assert.Empty((await catalog.PageAsync(activeOnly: false, 5, 2)).Migrations);

        // one finishes: the next list, on the same catalog, shows it finished and leaves it out of the active ones
        var (saga0, spm0, hsm0) = started[0];
        foreach (var step in MigrationPlan.ForwardSteps(MigrationStrategy.PreCopy, deleteSource: true))
            Answer(saga0, MigrationPlan.RoleOf(step) == HostRole.Spm ? spm0 : hsm0, step);
        await AwaitAsync(async () => (await catalog.PageAsync(activeOnly: true, 0, 10)).Total == 4);
        var all = await catalog.PageAsync(activeOnly: false, 0, 10);
        Assert.Equal(5, all.Total);
        Assert.True(all.Migrations.Single(v => v.Id == sagas[0].Id).Finished);
        // narrowed to a VM, to a status
        Assert.Equal([sagas[2].Id], (await catalog.PageAsync(activeOnly: false, 0, 10, vm: sagas[2].Vm)).Migrations.Select(v => v.Id));
        Assert.Equal([sagas[0].Id], (await catalog.PageAsync(activeOnly: false, 0, 10, status: "completed")).Migrations.Select(v => v.Id));
        Assert.Equal(4, (await catalog.PageAsync(activeOnly: false, 0, 10, status: "running")).Total);
        Assert.Equal(0, (await catalog.PageAsync(activeOnly: true, 0, 10, vm: sagas[0].Vm)).Total);
    }

    [Fact]
    public void Every_status_but_new_has_a_kind_a_list_narrows_to()
    {
        var statuses = typeof(MigrationStatus).GetNestedTypes().Where(t => t.IsSubclassOf(typeof(MigrationStatus)) && t != typeof(MigrationStatus.New));
        Assert.Equal(MigrationStatusKinds.All.Order(), statuses.Select(t => t.Name.ToLowerInvariant()).Order());
    }

    [Fact]
    public async Task A_speed_change_reaches_the_hsm_of_the_running_mirror_and_a_finished_migration_refuses_it()
    {
        await using var node = await ActorNode.StartAsync(_dataDirectory);
        var admission = node.System.ActorOf(MigrationAdmission.Props(MigrationLimits.Default));
        var saga = new SagaDriver();
        var (actor, spm, hsm) = Migration(node, saga, admission);
        Answer(actor, spm, MigrationStep.CloneImageStructure);
        var mirror = Answer(actor, hsm, MigrationStep.StartReplication);
        // the mirror and the SPM's copy of the internal layers run side by side and share the limit
        Assert.Equal(4_000_000, mirror.SpeedBytesPerSecond);
        var sync = spm.ExpectMsg<ExecuteStep>(Patience);
        Assert.Equal(4_000_000, sync.SpeedBytesPerSecond);

        actor.Tell(new SetMigrationSpeed(saga.Id, 0), node.Kit.TestActor);
        node.Kit.ExpectMsg<MigrationCommandAccepted>(Patience);
        var toHsm = hsm.ExpectMsg<SetStepSpeed>(Patience);
        Assert.Equal(0, toHsm.SpeedBytesPerSecond);
        Assert.Equal(saga.Image, toHsm.Operation.Image);
        Assert.Equal(sync.Operation, spm.ExpectMsg<SetStepSpeed>(Patience).Operation);

        // The steps sent from here on carry the new speed.
        actor.Tell(new OperationSucceeded(sync.Operation, new StepOutcome()), spm.Ref);
        Assert.Equal(0, hsm.ExpectMsg<ExecuteStep>(Patience).SpeedBytesPerSecond);

        actor.Tell(new CancelMigration(saga.Id), node.Kit.TestActor);
        node.Kit.ExpectMsg<MigrationCommandAccepted>(Patience);
        var cancel = hsm.FishForMessage<ExecuteStep>(s => s.Operation.Step == MigrationStep.CancelReplication, Patience);
        actor.Tell(new OperationSucceeded(cancel.Operation, new StepOutcome()), hsm.Ref);
        var delete = spm.FishForMessage<ExecuteStep>(s => s.Operation.Step == MigrationStep.DeleteDestinationImage, Patience);
        actor.Tell(new OperationSucceeded(delete.Operation, new StepOutcome()), spm.Ref);
        await AwaitAsync(() =>
        {
            actor.Tell(new GetMigrationState(saga.Id), node.Kit.TestActor);
            return Task.FromResult(node.Kit.ExpectMsg<MigrationStateReply>(Patience).View.Finished);
        });
        actor.Tell(new SetMigrationSpeed(saga.Id, 1_000), node.Kit.TestActor);
        Assert.Equal(MigrationErrorCodes.MigrationFinished, node.Kit.ExpectMsg<MigrationCommandRefused>(Patience).Code);
    }

    [Fact]
    public async Task A_cancel_stops_the_SPMs_copy_in_flight_and_the_saga_recovered_from_its_journal_stops_it_again()
    {
        var saga = new SagaDriver();
        ExecuteStep sync;
        await using (var node = await ActorNode.StartAsync(_dataDirectory))
        {
            var admission = node.System.ActorOf(MigrationAdmission.Props(MigrationLimits.Default));
            var (actor, spm, hsm) = Migration(node, saga, admission);
            Answer(actor, spm, MigrationStep.CloneImageStructure);
            Answer(actor, hsm, MigrationStep.StartReplication);
            sync = spm.ExpectMsg<ExecuteStep>(Patience);
            Assert.Equal(MigrationStep.SyncInternalVolumes, sync.Operation.Step);

            actor.Tell(new CancelMigration(saga.Id, "the operator needs the bandwidth"), node.Kit.TestActor);
            node.Kit.ExpectMsg<MigrationCommandAccepted>(Patience);
            var stop = spm.ExpectMsg<StopStep>(Patience);
            Assert.Equal(sync.Operation, stop.Operation);
            Assert.Contains("the operator needs the bandwidth", stop.Reason);
            hsm.ExpectNoMsg(TimeSpan.FromMilliseconds(300)); // the mirror is cancelled only once the copy answered
        }

        // The Coordinator restarts with the stop unanswered: the recovered saga sends the step again (the SPM attaches
        // to it or, having lost it, starts it) and its stop after it.
        await using var restarted = await ActorNode.StartAsync(_dataDirectory);
        var (newSpm, newHsm) = (restarted.Kit.CreateTestProbe(), restarted.Kit.CreateTestProbe());
        var recovered = restarted.System.ActorOf(MigrationActor.Props(saga.Id, new ProbeHosts(newSpm, newHsm),
            restarted.System.ActorOf(MigrationAdmission.Props(MigrationLimits.Default)), new MigrationActorSettings(TimeSpan.FromSeconds(30), 100)));
        Assert.Equal(sync.Operation, newSpm.ExpectMsg<ExecuteStep>(Patience).Operation);
        Assert.Equal(sync.Operation, newSpm.ExpectMsg<StopStep>(Patience).Operation);

        recovered.Tell(new OperationFailed(sync.Operation, ErrorCodes.StepStopped, "stopped", Transient: false), newSpm.Ref);
        var cancel = newHsm.ExpectMsg<ExecuteStep>(Patience);
        Assert.Equal(MigrationStep.CancelReplication, cancel.Operation.Step);
        recovered.Tell(new OperationSucceeded(cancel.Operation, new StepOutcome()), newHsm.Ref);
        var delete = newSpm.ExpectMsg<ExecuteStep>(Patience);
        Assert.Equal(MigrationStep.DeleteDestinationImage, delete.Operation.Step);
        recovered.Tell(new OperationSucceeded(delete.Operation, new StepOutcome()), newSpm.Ref);
        await AwaitAsync(() =>
        {
            recovered.Tell(new GetMigrationState(saga.Id), restarted.Kit.TestActor);
            return Task.FromResult(restarted.Kit.ExpectMsg<MigrationStateReply>(Patience).View.Status == "cancelled");
        });
        newSpm.ExpectNoMsg(TimeSpan.FromMilliseconds(200)); // no stop for the delete
    }

    private static async Task AwaitAsync(Func<Task<bool>> condition)
    {
        var deadline = DateTime.UtcNow + Patience;
        while (!await condition())
        {
            if (DateTime.UtcNow > deadline) throw new TimeoutException("condition not met within " + Patience);
            await Task.Delay(100);
        }
    }

    public Task InitializeAsync() => Task.CompletedTask;

    public Task DisposeAsync()
    {
        if (Directory.Exists(_dataDirectory)) Directory.Delete(_dataDirectory, recursive: true);
        return Task.CompletedTask;
    }
}
