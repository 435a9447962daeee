using Akka.Actor;
using Akka.Configuration;
using Akka.Persistence;
using Akka.TestKit.Xunit2;
using LiveMigration.Coordinator.Audit;
using LiveMigration.Shared.Protocol;
using LiveMigration.Shared.Serialization;

namespace LiveMigration.Coordinator.Tests.Audit;

/// <summary>
/// The persistent audit trail on the in-memory journal and snapshot store, with serialize-messages on so every record,
/// page and snapshot goes through the protocol serializer.
/// </summary>
public sealed class AuditActorTests() : TestKit(Config, nameof(AuditActorTests))
{
    private static readonly Config Config = ConfigurationFactory.ParseString("""
        akka.actor.serialize-messages = on
        akka.persistence.journal.plugin = "akka.persistence.journal.inmem"
        akka.persistence.snapshot-store.plugin = "akka.persistence.snapshot-store.inmem"
        """).WithFallback(ProtocolSerialization.Hocon);

    private static readonly TimeSpan Wait = TimeSpan.FromSeconds(5);
    private static readonly DateTimeOffset T0 = new(2026, 12, 2, 15, 0, 0, TimeSpan.Zero);
    private static readonly AuditOptions Small = new(KeepInMemory: 4, SnapshotEvery: 3);

    private void Record(IActorRef trail, IAuditMessage record, string requestId)
    {
        trail.Tell(record, TestActor);
        Assert.Equal(new AuditRecorded(requestId), ExpectMsg<AuditRecorded>(Wait));
    }

    private AuditEntries Page(IActorRef trail)
    {
        trail.Tell(new GetAuditEntries(null, null, 100), TestActor);
        return ExpectMsg<AuditEntries>(Wait);
    }

    private void Stop(IActorRef actor)
    {
        Watch(actor);
        actor.Tell(PoisonPill.Instance);
        ExpectTerminated(actor, Wait);
    }

    [Fact]
    public void A_new_trail_recovers_from_its_snapshot_and_the_events_after_it_the_same_entries_with_their_outcomes()
    {
        var trail = Sys.ActorOf(AuditActor.Props(Small));
        for (var i = 1; i <= 6; i++)
        {
            var id = $"request-{i}";
            Record(trail, new RecordAuditRequest(id, T0.AddMinutes(i), i % 2 == 0 ? "viewer" : "operator", "10.0.0.5", "POST", $"/api/test/{i}", $"{{\"i\":{i}}}", false), id);
            Record(trail, new RecordAuditOutcome(id, T0.AddMinutes(i).AddSeconds(1), i % 2 == 0 ? 403 : 200, i % 2 == 0 ? "FORBIDDEN" : null), id);
        }
        // a repeat (the API asking again after a lost receipt) is answered and not recorded twice
        Record(trail, new RecordAuditRequest("request-6", T0, "operator", "x", "POST", "/x", "", false), "request-6");
        var before = Page(trail);
        Stop(trail);

        var recovered = Page(Sys.ActorOf(AuditActor.Props(Small)));

        Assert.Equal(before, recovered);
        Assert.Equal([6L, 5L, 4L, 3L], recovered.Entries.Select(e => e.Number));
        Assert.Equal((403, "FORBIDDEN", "viewer"), (recovered.Entries[0].Status!.Value, recovered.Entries[0].ErrorCode!, recovered.Entries[0].Role));
        // 12 events, a snapshot every 3: the snapshot store holds the newest, taken at sequence number 12
        Sys.ActorSelection("/system/akka.persistence.snapshot-store.inmem").Tell(
            new LoadSnapshot(AuditActor.AuditPersistenceId, SnapshotSelectionCriteria.Latest, long.MaxValue), TestActor);
        var loaded = ExpectMsg<LoadSnapshotResult>(Wait);
        Assert.Equal(12, loaded.Snapshot!.Metadata.SequenceNr);
        Assert.Equal(6, Assert.IsType<AuditSnapshot>(loaded.Snapshot.Snapshot).LastNumber);
    }
}
