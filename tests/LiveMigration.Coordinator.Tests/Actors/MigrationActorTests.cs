using System.Diagnostics;
using Akka.Actor;
using Akka.Cluster.Sharding;
using Akka.TestKit;
using LiveMigration.Coordinator.Migration;
using LiveMigration.Coordinator.Tests.Migration;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;
using LiveMigration.Shared.Protocol;
using LiveMigration.Shared.Serialization;

namespace LiveMigration.Coordinator.Tests.Actors;

/// <summary>
/// The persistent actor around the saga, on a real SQLite journal, with actors playing the SPM and the HSM; every
/// message goes through serialization on its way (see <see cref="ActorNode"/>).
/// </summary>
public sealed class MigrationActorTests : IAsyncLifetime
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(20); // generous: CI has 2 cores and QEMU tests beside
    private readonly string _dataDirectory = Path.Combine(Path.GetTempPath(), $"lsm-actor-{Guid.NewGuid():N}");
    private readonly List<ActorNode> _nodes = [];

    private static MigrationActorSettings Settings(TimeSpan? deadline = null, int snapshotEvery = 100) =>
        new(deadline ?? TimeSpan.FromSeconds(10), snapshotEvery);

    private async Task<ActorNode> StartNode()
    {
        var node = await ActorNode.StartAsync(_dataDirectory);
        _nodes.Add(node);
        return node;
    }

    private static IActorRef Admission(ActorNode node, MigrationLimits? limits = null) =>
        node.System.ActorOf(MigrationAdmission.Props(limits ?? MigrationLimits.Default));

    private static MigrationStateReply StateOf(ActorNode node, HostProbes migration, MigrationId id)
    {
        migration.Saga.Tell(new GetMigrationState(id), node.Kit.TestActor);
        return node.Kit.ExpectMsg<MigrationStateReply>(Patience);
    }

    private static void Start(ActorNode node, HostProbes migration, SagaDriver saga, MigrationStrategy strategy = MigrationStrategy.PreCopy, RetryPolicy? retry = null)
    {
        migration.Saga.Tell(new StartMigration(saga.Id, saga.Request(strategy, retry: retry), saga.Facts()), node.Kit.TestActor);
        var accepted = node.Kit.ExpectMsg<MigrationCommandAccepted>(Patience);
        Assert.Equal(saga.Id, accepted.MigrationId);
        AssertGoesThroughTheProtocolSerializer(node, accepted);
    }

    /// <summary>serialize-messages alone would also pass with the Newtonsoft fallback: the binding itself is checked here.</summary>
    private static void AssertGoesThroughTheProtocolSerializer(ActorNode node, object message) =>
        Assert.IsType<ProtocolSerializer>(node.System.Serialization.FindSerializerFor(message));

    [Fact]
    public async Task Pre_copy_and_post_copy_complete_through_the_hosts_and_publish_their_progress()
    {
        var node = await StartNode();
        var admission = Admission(node);
        var published = node.Kit.CreateTestProbe();
        node.System.EventStream.Subscribe(published.Ref, typeof(MigrationStatusChanged));

        foreach (var strategy in new[] { MigrationStrategy.PreCopy, MigrationStrategy.PostCopy })
        {
            var saga = new SagaDriver();
            var migration = node.Migration(saga.Id, admission, Settings());
            Start(node, migration, saga, strategy);

            var steps = migration.SucceedAll();

            Assert.Equal(MigrationPlan.ForwardSteps(strategy, deleteSource: true), steps);
            var reply = StateOf(node, migration, saga.Id);
            AssertGoesThroughTheProtocolSerializer(node, reply);
            var view = reply.View;
            Assert.Equal("completed", view.Status);
            Assert.True(view.Finished);
            Assert.Equal(strategy, view.Strategy);
            var disk = Assert.Single(view.Disks);
            Assert.Equal(nameof(DiskPhase.Completed), disk.Phase);
            Assert.Equal(steps, disk.Timings.Select(t => t.Step));
            var last = published.FishForMessage<MigrationStatusChanged>(m => m.MigrationId == saga.Id && m.Status == "completed", Patience);
            Assert.Equal(saga.Image, Assert.Single(last.Disks).Image);
            AssertGoesThroughTheProtocolSerializer(node, last);
            migration.NoStep(TimeSpan.FromMilliseconds(100));
        }
    }

    [Fact]
    public async Task Progress_is_shown_and_published_at_most_once_a_second_but_never_journaled()
    {
        var node = await StartNode();
        var admission = Admission(node);
        var published = node.Kit.CreateTestProbe();
        node.System.EventStream.Subscribe(published.Ref, typeof(MigrationStatusChanged));
        var saga = new SagaDriver();
        var migration = node.Migration(saga.Id, admission, Settings());
        Start(node, migration, saga);
        var step = migration.NextStep();
        var journaled = StateOf(node, migration, saga.Id).LastSequenceNr;

        // ten reports within a few milliseconds, as a copy's would come over a second
        for (var done = 1; done <= 10; done++)
            migration.Saga.Tell(new OperationProgress(step.Operation, done * 100, 1000), migration.Received.Ref);

        var shown = StateOf(node, migration, saga.Id);
        Assert.Equal((1000L, 1000L), (shown.View.Disks[0].Done, shown.View.Disks[0].Total));
        Assert.Equal(journaled, shown.LastSequenceNr);
        // at most the first report at once (when the last publication is a second old) and one for all the others, a second
        // later, carrying the last
        var progress = published.ReceiveWhile(TimeSpan.FromSeconds(2.5), m => (MigrationStatusChanged)m)
            .Where(m => m.MigrationId == saga.Id && m.Disks[0].Done > 0).ToList();
        Assert.InRange(progress.Count, 1, 2);
        Assert.Equal(1000L, progress[^1].Disks[0].Done);

        // the step's outcome is journaled and published as always
        migration.Succeed(step);
        migration.NextStep();
        Assert.True(StateOf(node, migration, saga.Id).LastSequenceNr > journaled);
    }

    [Fact]
    public async Task A_second_migration_of_a_disk_in_an_active_migration_is_refused_and_records_nothing()
    {
        var node = await StartNode();
        var admission = Admission(node);
        var first = new SagaDriver();
        var firstMigration = node.Migration(first.Id, admission, Settings());
        Start(node, firstMigration, first);

        var secondId = MigrationId.New();
        var second = node.Migration(secondId, admission, Settings());
        var facts = first.Facts() with { DisksInActiveMigrations = [first.Image] };
        second.Saga.Tell(new StartMigration(secondId, first.Request(), facts), node.Kit.TestActor);

        var refused = node.Kit.ExpectMsg<MigrationCommandRefused>(Patience);
        AssertGoesThroughTheProtocolSerializer(node, refused);
        Assert.Equal(MigrationErrorCodes.DiskBusy, refused.Code);
        Assert.Contains(first.Image.ToString(), refused.Message);
        var state = StateOf(node, second, secondId);
        Assert.Equal("new", state.View.Status);
        Assert.False(state.Exists);
        Assert.Equal(0, state.LastSequenceNr);
        second.NoStep(TimeSpan.FromMilliseconds(200));
    }

    [Fact]
    public Task After_a_stop_mid_step_the_recovered_actor_sends_the_same_operation_id_and_completes() =>
        StopMidStepRestartAndComplete(
            () => ActorNode.StartAsync(_dataDirectory),
            table => Task.FromResult(Rows(Path.Combine(_dataDirectory, table == "journal" ? "journal.db" : "snapshots.db"), table)));

    /// <summary>
    /// The crash-safety scenario on whichever journal <paramref name="startNode"/> wires: stop the node while a
    /// step waits for its host, start a new one on the same journal, and the recovered saga (from a snapshot and
    /// the events after it) sends that step again with the same operation id and completes.
    /// </summary>
    internal static async Task StopMidStepRestartAndComplete(Func<Task<ActorNode>> startNode, Func<string, Task<long>> rows)
    {
        var saga = new SagaDriver();
        ExecuteStep unanswered;
        MigrationView before;
        long eventsBefore;
        await using (var node = await startNode())
        {
            // a snapshot every 2 events: recovery reads a snapshot and the events after it
            var migration = node.Migration(saga.Id, Admission(node), Settings(snapshotEvery: 2));
            Start(node, migration, saga);
            migration.Succeed(migration.NextStep());
            migration.Succeed(migration.NextStep());
            unanswered = migration.NextStep();
            (before, eventsBefore) = StateOf(node, migration, saga.Id);
            // A saga saves its snapshot without waiting for it (only its events are awaited): on PostgreSQL CI stopped the
            // node before the write arrived. Wait for it while the node runs; the assertion below still fails if none comes.
            var deadline = DateTime.UtcNow.AddSeconds(10);
            while (await rows("snapshot") == 0 && DateTime.UtcNow < deadline) await Task.Delay(20);
        }

        Assert.True(await rows("snapshot") > 0, "no snapshot was saved");
        Assert.Equal(eventsBefore, await rows("journal"));

        await using var restarted = await startNode();
        var recovered = restarted.Migration(saga.Id, Admission(restarted), Settings());

        var resent = recovered.NextStep();
        Assert.Equal(unanswered.Operation, resent.Operation);
        Assert.Equal(unanswered, resent);
        Assert.Equal(before, StateOf(restarted, recovered, saga.Id).View);
        recovered.SucceedAll(resent);
        var after = StateOf(restarted, recovered, saga.Id).View;
        Assert.Equal("completed", after.Status);
        Assert.True(after.Finished);
    }

    private static long Rows(string file, string table)
    {
        using var connection = new Microsoft.Data.Sqlite.SqliteConnection($"Data Source={file};Pooling=false");
        connection.Open();
        using var count = connection.CreateCommand();
        count.CommandText = $"SELECT COUNT(*) FROM {table}";
        return (long)count.ExecuteScalar()!;
    }

    [Fact]
    public async Task A_host_that_never_answers_gets_the_same_operation_again_after_the_deadline()
    {
        var node = await StartNode();
        var saga = new SagaDriver();
        var migration = node.Migration(saga.Id, Admission(node), Settings(deadline: TimeSpan.FromMilliseconds(400)));
        Start(node, migration, saga);

        // Measured between the two arrivals at the host, not from when this thread read the first: on a loaded CI the
        // test read the first step after the deadline had already sent it again (3 ms apart as the test saw them).
        var first = migration.NextArrival();
        var again = migration.NextArrival(TimeSpan.FromSeconds(3));

        Assert.Equal(first.Step.Operation, again.Step.Operation);
        var gap = Stopwatch.GetElapsedTime(first.ArrivedAt, again.ArrivedAt);
        Assert.True(gap >= TimeSpan.FromMilliseconds(300), $"sent again {gap} after the first, before the 400 ms deadline");
        migration.Succeed(again.Step);
        // A third send of the same operation may already be on its way if this thread ran late; the answer ends them.
        var next = migration.NextStep();
        while (next.Operation == first.Step.Operation) next = migration.NextStep();
        Assert.NotEqual(first.Step.Operation.Step, next.Operation.Step);
    }

    [Fact]
    public async Task A_host_that_rejoins_gets_its_own_steps_in_flight_again_at_once_and_no_other_host_does()
    {
        var node = await StartNode();
        var saga = new SagaDriver();
        var migration = node.Migration(saga.Id, Admission(node), Settings(), host: "host-1");
        Start(node, migration, saga);

        var spmStep = migration.NextStep();
        Assert.Equal(HostRole.Spm, MigrationPlan.RoleOf(spmStep.Operation.Step));
        // Another host that cannot hold the SPM lost nothing of this migration; the VM's own host has no step now.
        migration.Saga.Tell(new HostRejoined("akka.tcp://lsm@10.0.0.2:4061", "host-2", SpmCapable: false));
        migration.Saga.Tell(new HostRejoined("akka.tcp://lsm@10.0.0.1:4061", "host-1", SpmCapable: false));
        migration.NoStep(TimeSpan.FromMilliseconds(500));
        // An SPM-capable host may hold the SPM now: the SPM's step goes out again, with the same operation id.
        migration.Saga.Tell(new HostRejoined("akka.tcp://lsm@10.0.0.2:4061", "host-2", SpmCapable: true));
        Assert.Equal(spmStep.Operation, migration.NextStep().Operation);

        var step = spmStep;
        while (MigrationPlan.RoleOf(step.Operation.Step) != HostRole.Hsm)
        {
            migration.Succeed(step);
            step = migration.NextStep();
        }
        migration.Saga.Tell(new HostRejoined("akka.tcp://lsm@10.0.0.2:4061", "host-2", SpmCapable: true));
        migration.NoStep(TimeSpan.FromMilliseconds(500));
        migration.Saga.Tell(new HostRejoined("akka.tcp://lsm@10.0.0.1:4061", "host-1", SpmCapable: false));
        Assert.Equal(step.Operation, migration.NextStep().Operation);
        // A host this node has no report from yet may be the VM's.
        migration.Saga.Tell(new HostRejoined("akka.tcp://lsm@10.0.0.3:4061", null, SpmCapable: false));
        Assert.Equal(step.Operation, migration.NextStep().Operation);
    }

    [Fact]
    public async Task A_transient_failure_is_retried_with_the_next_attempt_after_the_backoff()
    {
        var node = await StartNode();
        var saga = new SagaDriver();
        var migration = node.Migration(saga.Id, Admission(node), Settings());
        Start(node, migration, saga, retry: new RetryPolicy(3, TimeSpan.FromMilliseconds(500), TimeSpan.FromSeconds(2)));

        var first = migration.NextStep();
        var clock = Stopwatch.StartNew();
        migration.Fail(first, ErrorCodes.Timeout, transient: true);
        var retry = migration.NextStep(TimeSpan.FromSeconds(3));

        Assert.True(clock.Elapsed >= TimeSpan.FromMilliseconds(450), $"retried after {clock.Elapsed}, before the 500 ms backoff");
        Assert.Equal(first.Operation with { Attempt = 2 }, retry.Operation);
        migration.SucceedAll(retry);
        Assert.Equal("completed", StateOf(node, migration, saga.Id).View.Status);
    }

    [Fact]
    public async Task A_second_migration_on_a_host_at_its_limit_waits_queued_until_the_first_finishes()
    {
        var node = await StartNode();
        var admission = Admission(node, new MigrationLimits(PerHost: 1, PerDomain: 0));
        var first = new SagaDriver();
        var second = new SagaDriver();
        var firstMigration = node.Migration(first.Id, admission, Settings(), host: "host-a");
        var secondMigration = node.Migration(second.Id, admission, Settings(), host: "host-a");

        Start(node, firstMigration, first);
        var firstStep = firstMigration.NextStep();
        Start(node, secondMigration, second);

        secondMigration.NoStep(TimeSpan.FromMilliseconds(300));
        Assert.Equal("queued", StateOf(node, secondMigration, second.Id).View.Status);
        firstMigration.SucceedAll(firstStep);
        var secondStep = secondMigration.NextStep();
        Assert.Equal(MigrationPlan.ForwardSteps(MigrationStrategy.PreCopy, true)[0], secondStep.Operation.Step);
        Assert.Equal("running", StateOf(node, secondMigration, second.Id).View.Status);
    }

    [Fact]
    public async Task After_a_restart_a_recovered_queued_migration_lets_the_running_ones_reannounce_before_it_asks()
    {
        var first = new SagaDriver();
        var second = new SagaDriver();
        var limits = new MigrationLimits(PerHost: 1, PerDomain: 0);
        var settings = Settings() with { RecoveredQueuedAskDelay = TimeSpan.FromSeconds(1.5) };
        await using (var node = await StartNode())
        {
            var admission = Admission(node, limits);
            var running = node.Migration(first.Id, admission, settings, host: "host-a");
            var queued = node.Migration(second.Id, admission, settings, host: "host-a");
            Start(node, running, first);
            running.NextStep();
            Start(node, queued, second);
            queued.NoStep(TimeSpan.FromMilliseconds(300));
            Assert.Equal("queued", StateOf(node, queued, second.Id).View.Status);
        }
        _nodes.Clear();

        // The Coordinator starts again: the limits remember nothing, and the queued saga happens to recover first
        // (found by hand: it asked before the running ones said they hold their slots, and three ran on a host of two).
        var restarted = await StartNode();
        var fresh = Admission(restarted, limits);
        var queuedAgain = restarted.Migration(second.Id, fresh, settings, host: "host-a");
        await Task.Delay(300);
        var runningAgain = restarted.Migration(first.Id, fresh, settings, host: "host-a");

        var resent = runningAgain.NextStep();
        queuedAgain.NoStep(TimeSpan.FromSeconds(2.5)); // it asked after its delay and was told to wait
        Assert.Equal("queued", StateOf(restarted, queuedAgain, second.Id).View.Status);
        runningAgain.SucceedAll(resent);
        Assert.Equal(MigrationPlan.ForwardSteps(MigrationStrategy.PreCopy, true)[0], queuedAgain.NextStep().Operation.Step);
    }

    [Fact]
    public Task A_migration_whose_host_this_node_has_not_heard_of_is_held_to_the_host_the_inventory_names() =>
        // this Coordinator's directory has no report of the second VM (it started after the VM last changed)
        SecondOnHostAWaitsForTheFirst(locateFailures: 0, Settings(), TimeSpan.FromMilliseconds(500));

    [Fact]
    public Task An_inventory_that_does_not_answer_where_the_VM_runs_is_asked_again_and_the_claim_waits_for_its_answer() =>
        // the inventory is recovering: the first lookup times out (no answer is not "no host"); asked again with the next
        // admission retry (1 s), then held to host-a's limit
        SecondOnHostAWaitsForTheFirst(locateFailures: 1, Settings(deadline: TimeSpan.FromSeconds(1)), TimeSpan.FromSeconds(2.5));

    /// <summary>
    /// A migration runs on host-a (limit 1); a second one, whose VM only the inventory places on host-a (after
    /// <paramref name="locateFailures"/> lookups unanswered), stays queued for <paramref name="queuedFor"/> and runs once the first ends.
    /// </summary>
    private async Task SecondOnHostAWaitsForTheFirst(int locateFailures, MigrationActorSettings settings, TimeSpan queuedFor)
    {
        var node = await StartNode();
        var admission = Admission(node, new MigrationLimits(PerHost: 1, PerDomain: 0));
        var first = new SagaDriver();
        var second = new SagaDriver();
        var running = node.Migration(first.Id, admission, settings, host: "host-a");
        var unknown = node.Migration(second.Id, admission, settings, host: null, located: "host-a", locateFailures: locateFailures);

        Start(node, running, first);
        var firstStep = running.NextStep();
        Start(node, unknown, second);
        unknown.NoStep(queuedFor);
        Assert.Equal("queued", StateOf(node, unknown, second.Id).View.Status);
        running.SucceedAll(firstStep);
        Assert.Equal(MigrationPlan.ForwardSteps(MigrationStrategy.PreCopy, true)[0], unknown.NextStep().Operation.Step);
    }

    [Fact]
    public async Task After_a_restart_a_running_migration_holds_its_hosts_slot_though_the_directory_does_not_know_its_VM()
    {
        var first = new SagaDriver();
        var limits = new MigrationLimits(PerHost: 1, PerDomain: 0);
        await using (var node = await StartNode())
        {
            var running = node.Migration(first.Id, Admission(node, limits), Settings(), host: "host-a");
            Start(node, running, first);
            running.NextStep();
        }
        _nodes.Clear();

        // The Coordinator starts again: its directory learns hosts from changes, and the idle VM's report changed nothing.
        var restarted = await StartNode();
        var fresh = Admission(restarted, limits);
        var runningAgain = restarted.Migration(first.Id, fresh, Settings(), host: null, located: "host-a");
        var resent = runningAgain.NextStep();
        await Task.Delay(300); // the inventory's answer reaches the saga (the probes answer at once)

        var second = new SagaDriver();
        var queued = restarted.Migration(second.Id, fresh, Settings(), host: "host-a");
        Start(restarted, queued, second);
        queued.NoStep(TimeSpan.FromMilliseconds(500));
        Assert.Equal("queued", StateOf(restarted, queued, second.Id).View.Status);
        runningAgain.SucceedAll(resent);
        Assert.Equal(MigrationPlan.ForwardSteps(MigrationStrategy.PreCopy, true)[0], queued.NextStep().Operation.Step);
    }

    [Fact]
    public async Task A_release_lost_on_its_way_is_found_by_the_admissions_check_and_the_queued_migration_runs()
    {
        var node = await StartNode();
        var first = new SagaDriver();
        var second = new SagaDriver();
        var sagas = new Dictionary<MigrationId, IActorRef>();
        // the shard region's stand-in: routes a check to its saga, as the region would (waking a passivated one)
        var region = node.Kit.CreateTestProbe();
        var checks = new List<MigrationId>();
        region.SetAutoPilot(new DelegateAutoPilot((sender, message) =>
        {
            if (message is AdmissionCheck check)
            {
                lock (checks) checks.Add(check.MigrationId);
                sagas[check.MigrationId].Tell(check, sender);
            }
            return AutoPilot.KeepRunning;
        }));
        var admission = node.System.ActorOf(MigrationAdmission.Props(new MigrationLimits(PerHost: 1, PerDomain: 0), () => region.Ref,
            TimeSpan.FromMilliseconds(300)));
        // between the sagas and the limits: the first migration's release is lost (its Coordinator died with it in flight)
        var lossy = node.Kit.CreateTestProbe();
        lossy.SetAutoPilot(new DelegateAutoPilot((sender, message) =>
        {
            if (message is not AdmissionReleased released || released.Migration != first.Id) admission.Tell(message, sender);
            return AutoPilot.KeepRunning;
        }));
        var firstMigration = node.Migration(first.Id, lossy.Ref, Settings(), host: "host-a");
        var secondMigration = node.Migration(second.Id, lossy.Ref, Settings(), host: "host-a");
        (sagas[first.Id], sagas[second.Id]) = (firstMigration.Saga, secondMigration.Saga);

        Start(node, firstMigration, first);
        firstMigration.SucceedAll(firstMigration.NextStep());
        Assert.Equal("completed", StateOf(node, firstMigration, first.Id).View.Status);
        // nothing waits: nobody is asked
        await Task.Delay(700);
        lock (checks) Assert.Empty(checks);

        Start(node, secondMigration, second);
        // the finished first still holds host-a's one slot as far as the limits know, until the check finds it finished
        var secondStep = secondMigration.NextStep(TimeSpan.FromSeconds(10));
        Assert.Equal(MigrationPlan.ForwardSteps(MigrationStrategy.PreCopy, true)[0], secondStep.Operation.Step);
        Assert.Equal("running", StateOf(node, secondMigration, second.Id).View.Status);
        lock (checks) Assert.Equal([first.Id], checks.Distinct());
    }

    [Fact]
    public async Task When_the_limits_start_anew_a_running_migration_tells_them_what_it_holds_and_a_queued_one_asks_them_again()
    {
        var node = await StartNode();
        var limits = node.Kit.CreateTestProbe();
        var (running, queued) = (new SagaDriver(), new SagaDriver());
        var runningMigration = node.Migration(running.Id, limits.Ref, Settings(), host: "host-a");
        var queuedMigration = node.Migration(queued.Id, limits.Ref, Settings(), host: "host-a");
        Start(node, runningMigration, running);
        limits.Reply(new AdmitMigration(limits.ExpectMsg<AdmissionRequest>(Patience).Migration));
        // admitted: said as held too (an admit of limits that since moved would otherwise leave it uncounted in the new ones' queue)
        Assert.Equal(running.Id, limits.ExpectMsg<AdmissionHeld>(Patience).Migration);
        runningMigration.NextStep();
        Start(node, queuedMigration, queued);
        Assert.Equal(queued.Id, limits.ExpectMsg<AdmissionRequest>(Patience).Migration); // not answered: it waits

        // the singleton moved: the new one, named in the announcement, hears from each directly
        var moved = node.Kit.CreateTestProbe();
        runningMigration.Saga.Tell(new AnnounceAdmission(moved.Ref));
        var held = moved.ExpectMsg<AdmissionHeld>(Patience);
        Assert.Equal((running.Id, "host-a"), (held.Migration, held.Host));
        queuedMigration.Saga.Tell(new AnnounceAdmission(moved.Ref));
        var asked = moved.ExpectMsg<AdmissionRequest>(Patience);
        Assert.Equal((queued.Id, "host-a"), (asked.Migration, asked.Host));
    }

    [Fact]
    public async Task A_running_migration_asked_by_the_admissions_check_keeps_its_slot_and_the_next_one_waits()
    {
        var node = await StartNode();
        var first = new SagaDriver();
        var second = new SagaDriver();
        var sagas = new Dictionary<MigrationId, IActorRef>();
        var region = node.Kit.CreateTestProbe();
        var checks = 0;
        region.SetAutoPilot(new DelegateAutoPilot((sender, message) =>
        {
            if (message is AdmissionCheck check)
            {
                Assert.Equal(first.Id, check.MigrationId); // the holder, never the one waiting
                Interlocked.Increment(ref checks);
                sagas[check.MigrationId].Tell(check, sender);
            }
            return AutoPilot.KeepRunning;
        }));
        var admission = node.System.ActorOf(MigrationAdmission.Props(new MigrationLimits(PerHost: 1, PerDomain: 0), () => region.Ref,
            TimeSpan.FromMilliseconds(200)));
        var firstMigration = node.Migration(first.Id, admission, Settings(), host: "host-a");
        var secondMigration = node.Migration(second.Id, admission, Settings(), host: "host-a");
        (sagas[first.Id], sagas[second.Id]) = (firstMigration.Saga, secondMigration.Saga);

        Start(node, firstMigration, first);
        var firstStep = firstMigration.NextStep();
        Start(node, secondMigration, second);

        // several checks answered "held": the second still waits
        secondMigration.NoStep(TimeSpan.FromMilliseconds(1200));
        Assert.Equal("queued", StateOf(node, secondMigration, second.Id).View.Status);
        Assert.True(Volatile.Read(ref checks) >= 2, $"the holder was asked {checks} times");
        firstMigration.SucceedAll(firstStep);
        secondMigration.NextStep();
    }

    [Fact]
    public void The_extractor_routes_host_replies_and_commands_of_a_migration_to_the_same_entity_and_shard()
    {
        var extractor = new MigrationMessageExtractor(30);
        var id = MigrationId.New();
        var operation = new OperationId(id, MigrationStep.Pivot, ImageId.New(), 2);

        var replies = new object[]
        {
            new OperationSucceeded(operation, new StepOutcome()),
            new OperationFailed(operation, ErrorCodes.Timeout, "slow", true),
            new OperationProgress(operation, 1, 2),
            new CancelMigration(id),
            new GetMigrationState(id),
        };
        var start = new StartMigration(id, new SagaDriver().Request(), new SagaDriver().Facts());
        var shard = extractor.ShardId(extractor.EntityId(start)!, start);
        foreach (var message in replies)
        {
            Assert.Equal(id.ToString(), extractor.EntityId(message));
            Assert.Equal(shard, extractor.ShardId(extractor.EntityId(message)!, message));
            Assert.Same(message, extractor.EntityMessage(message));
        }
        Assert.Null(extractor.EntityId("not a migration message"));
        // the same shard in any process: the shard comes from the id's text, not a per-process hash
        Assert.Equal(shard, new MigrationMessageExtractor(30).ShardId(id.ToString(), null));
    }

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync()
    {
        foreach (var node in _nodes)
            await node.DisposeAsync();
        if (Directory.Exists(_dataDirectory))
            Directory.Delete(_dataDirectory, recursive: true);
    }
}
