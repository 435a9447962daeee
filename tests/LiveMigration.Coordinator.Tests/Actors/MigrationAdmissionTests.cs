using Akka.Actor;
using Akka.Cluster.Tools.PublishSubscribe;
using Akka.TestKit.Xunit2;
using LiveMigration.Coordinator.Migration;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;

namespace LiveMigration.Coordinator.Tests.Actors;

/// <summary>
/// The admission limits as a singleton that starts anew (moved to another Coordinator, or its Coordinator restarted):
/// it says so, and admits nothing until the migrations still running have had time to say what they hold.
/// </summary>
public sealed class MigrationAdmissionTests() : TestKit(nameof(MigrationAdmissionTests))
{
    private static readonly TimeSpan Settle = TimeSpan.FromMilliseconds(800);

    [Fact]
    public void A_started_limit_announces_itself_and_counts_the_slots_still_held_before_it_admits_anyone()
    {
        var mediator = CreateTestProbe();
        var admission = Sys.ActorOf(MigrationAdmission.Props(new MigrationLimits(PerHost: 1, PerDomain: 0), announceTo: mediator.Ref, settleTime: Settle));
        var published = mediator.ExpectMsg<Publish>();
        Assert.Equal(AdmissionRestarted.Topic, published.Topic);
        Assert.IsType<AdmissionRestarted>(published.Message);

        var (running, waiting, elsewhere) = (MigrationId.New(), MigrationId.New(), MigrationId.New());
        var (waitingSaga, elsewhereSaga) = (CreateTestProbe(), CreateTestProbe());
        // a queued migration asks before the one running on its host (on another Coordinator) has said so
        admission.Tell(new AdmissionRequest(waiting, "host-a", []), waitingSaga.Ref);
        admission.Tell(new AdmissionRequest(elsewhere, "host-b", []), elsewhereSaga.Ref);
        waitingSaga.ExpectNoMsg(Settle / 2);
        admission.Tell(new AdmissionHeld(running, "host-a", []), TestActor);

        // settled: host-b's request is admitted, host-a's waits for the one running there
        Assert.Equal(elsewhere, elsewhereSaga.ExpectMsg<AdmitMigration>(Settle * 3).MigrationId);
        waitingSaga.ExpectNoMsg(Settle);
        admission.Tell(new AdmissionReleased(running), TestActor);
        Assert.Equal(waiting, waitingSaga.ExpectMsg<AdmitMigration>().MigrationId);
    }

    /// <summary>Limits whose count of the journal's running migrations is not in yet, and a migration on host-b asking to use domain d.</summary>
    private (IActorRef Admission, TaskCompletionSource<IReadOnlyList<AdmissionHeld>> Journal, Akka.TestKit.TestProbe Saga, MigrationId Waiting, DomainId Domain)
        WaitingWhileTheJournalIsCounted(MigrationLimits limits)
    {
        var (waiting, domain) = (MigrationId.New(), DomainId.New());
        var journal = new TaskCompletionSource<IReadOnlyList<AdmissionHeld>>();
        var admission = Sys.ActorOf(MigrationAdmission.Props(limits, settleTime: TimeSpan.FromMilliseconds(100), journaled: () => journal.Task));
        var saga = CreateTestProbe();
        admission.Tell(new AdmissionRequest(waiting, "host-b", [domain]), saga.Ref);
        return (admission, journal, saga, waiting, domain);
    }

    [Fact]
    public void The_migrations_the_journal_has_running_hold_their_slots_before_their_sagas_say_so()
    {
        // a Coordinator that died with the limits ran one on host-a and domain d: its saga comes back only when its shard
        // moves, while its copy goes on
        var running = MigrationId.New();
        var (admission, journal, saga, waiting, domain) = WaitingWhileTheJournalIsCounted(new MigrationLimits(PerHost: 1, PerDomain: 1));
        saga.ExpectNoMsg(Settle); // the settle time is over, the count is not in: nothing is admitted yet

        journal.SetResult([new AdmissionHeld(running, "host-a", [domain])]);
        saga.ExpectNoMsg(Settle); // domain d is at its limit of one
        admission.Tell(new AdmissionReleased(running), TestActor);
        Assert.Equal(waiting, saga.ExpectMsg<AdmitMigration>().MigrationId);
    }

    [Fact]
    public void A_migration_that_finished_while_the_journal_was_counted_is_not_counted_again()
    {
        var finished = MigrationId.New();
        var (admission, journal, saga, waiting, domain) = WaitingWhileTheJournalIsCounted(new MigrationLimits(PerHost: 0, PerDomain: 1));
        // its release overtakes the count, which was read before it finished
        admission.Tell(new AdmissionReleased(finished), TestActor);
        journal.SetResult([new AdmissionHeld(finished, "host-a", [domain])]);
        Assert.Equal(waiting, saga.ExpectMsg<AdmitMigration>().MigrationId);
    }

    [Fact]
    public void A_count_that_fails_does_not_keep_the_limits_from_admitting()
    {
        var admission = Sys.ActorOf(MigrationAdmission.Props(new MigrationLimits(PerHost: 1, PerDomain: 0), settleTime: TimeSpan.FromMilliseconds(100),
            journaled: () => throw new InvalidOperationException("the migrations list cannot be read (test)")));
        var migration = MigrationId.New();
        admission.Tell(new AdmissionRequest(migration, "host-a", []), TestActor);
        Assert.Equal(migration, ExpectMsg<AdmitMigration>().MigrationId);
    }

    [Fact]
    public void Without_limits_nothing_waits_for_the_count()
    {
        var admission = Sys.ActorOf(MigrationAdmission.Props(new MigrationLimits(PerHost: 0, PerDomain: 0), announceTo: CreateTestProbe().Ref, settleTime: TimeSpan.FromMinutes(1)));
        var migration = MigrationId.New();
        admission.Tell(new AdmissionRequest(migration, "host-a", [DomainId.New()]), TestActor);
        Assert.Equal(migration, ExpectMsg<AdmitMigration>().MigrationId);
    }
}
