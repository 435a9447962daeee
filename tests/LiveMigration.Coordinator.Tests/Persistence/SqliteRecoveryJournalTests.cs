using Akka.Actor;
using Akka.Persistence;
using LiveMigration.Coordinator.Persistence;
using LiveMigration.Coordinator.Tests.Actors;

namespace LiveMigration.Coordinator.Tests.Persistence;

/// <summary>
/// The Coordinator's SQLite journal reads recoveries with its own statements (<see cref="SqliteRecoveryJournal"/>): what a
/// recovering actor is told must be exactly what the plugin's own journal tells it, on the same file, in every shape a
/// recovery asks for (from a snapshot on, up to a number, at most N, deleted events, more events than the plugin reads
/// in one batch, an id with no events), and likewise the snapshot a recovery starts from.
/// </summary>
public sealed class SqliteRecoveryJournalTests : IDisposable
{
    private const string PluginsOwnJournal = """
        akka.persistence.journal.sql.class = "Akka.Persistence.Sql.Journal.SqlWriteJournal, Akka.Persistence.Sql"
        akka.persistence.snapshot-store.sql.class = "Akka.Persistence.Sql.Snapshot.SqlSnapshotStore, Akka.Persistence.Sql"
        """;
    private readonly string _dir = Directory.CreateTempSubdirectory("lsm-recovery-journal-").FullName;

    public void Dispose()
    {
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { }
    }

    private static readonly (string Id, long From, long To, long Max)[] Replays =
    [
        ("plain", 1, long.MaxValue, long.MaxValue),
        ("plain", 0, long.MaxValue, long.MaxValue),
        ("plain", 4, long.MaxValue, long.MaxValue),     // after a snapshot at 3
        ("plain", 1, 4, long.MaxValue),                 // Recovery(toSequenceNr: 4)
        ("plain", 1, long.MaxValue, 2),                 // Recovery(replayMax: 2)
        ("plain", 1, long.MaxValue, 0),
        ("plain", 8, long.MaxValue, long.MaxValue),     // a snapshot at the last event
        ("none", 1, long.MaxValue, long.MaxValue),
        ("deleted-prefix", 1, long.MaxValue, long.MaxValue),
        ("all-deleted", 1, long.MaxValue, long.MaxValue),
        ("many", 1, long.MaxValue, long.MaxValue),      // over the plugin's replay batch of 1,000
        ("many", 1200, 2400, 1000),
    ];

    private static readonly (string Id, SnapshotSelectionCriteria Criteria)[] SnapshotLoads =
    [
        ("plain", SnapshotSelectionCriteria.Latest),
        ("plain", new SnapshotSelectionCriteria(4)),          // not the latest: the plugin's own read
        ("plain", new SnapshotSelectionCriteria(long.MaxValue, DateTime.MaxValue, minSequenceNr: 6)),
        ("none", SnapshotSelectionCriteria.Latest),
        ("deleted-prefix", SnapshotSelectionCriteria.Latest),
    ];

    [Fact]
    public async Task A_recovery_hears_exactly_what_the_plugins_own_journal_tells_it()
    {
        await using (var node = await ActorNode.StartAsync(_dir, serializeMessages: false))
        {
            Assert.StartsWith(typeof(SqliteRecoveryJournal).FullName + ",", PluginClass(node, "journal"));
            Assert.StartsWith(typeof(SqliteRecoverySnapshotStore).FullName + ",", PluginClass(node, "snapshot-store"));
            var writer = node.System.ActorOf(Props.Create(() => new Writer()));
            Ask(node, writer, new Write("plain", 3));
            Ask(node, writer, new Snapshot("plain"));
            Ask(node, writer, new Write("plain", 2));
            Ask(node, writer, new Snapshot("plain"));
            Ask(node, writer, new Write("plain", 2));
            Ask(node, writer, new Write("deleted-prefix", 6));
            Ask(node, writer, new Delete("deleted-prefix", 3));
            Ask(node, writer, new Write("all-deleted", 4));
            Ask(node, writer, new Delete("all-deleted", 4));
            Ask(node, writer, new Write("many", 2500));
        }

        List<string> ours, plugins;
        await using (var node = await ActorNode.StartAsync(_dir, serializeMessages: false))
            ours = [..SnapshotLoads.Select(l => Load(node, l.Id, l.Criteria)), ..Replays.SelectMany(r => Replay(node, r.Id, r.From, r.To, r.Max))];
        await using (var node = await ActorNode.StartAsync(_dir, serializeMessages: false, hocon: PluginsOwnJournal))
        {
            Assert.StartsWith("Akka.Persistence.Sql.Journal.SqlWriteJournal,", PluginClass(node, "journal"));
            Assert.StartsWith("Akka.Persistence.Sql.Snapshot.SqlSnapshotStore,", PluginClass(node, "snapshot-store"));
            plugins = [..SnapshotLoads.Select(l => Load(node, l.Id, l.Criteria)), ..Replays.SelectMany(r => Replay(node, r.Id, r.From, r.To, r.Max))];
        }

        Assert.Equal(plugins, ours);
        // And what that is, so that two journals saying nothing alike would not pass.
        Assert.Contains("plain#7 'plain-7' deleted=False", ours.First(l => l.StartsWith("plain#7 ")));
        Assert.Contains("deleted-prefix highest 6", ours);
        Assert.DoesNotContain(ours, l => l.StartsWith("deleted-prefix#3 "));
        Assert.Contains("deleted-prefix#4 'deleted-prefix-4' deleted=False", ours.First(l => l.StartsWith("deleted-prefix#4 ")));
        Assert.Contains("all-deleted highest 4", ours);
        Assert.Equal(2500 + 1000, ours.Count(l => l.StartsWith("many#")));
        Assert.Contains("none highest 0", ours);
        Assert.StartsWith("plain snapshot #5 'plain-state-5' at ", ours[0]);
        Assert.StartsWith("plain snapshot #3 'plain-state-3' at ", ours[1]);
        Assert.StartsWith("plain snapshot #5 ", ours[2]);   // the plugin reads the latest whatever the lower bounds say
        Assert.Equal("none no snapshot", ours[3]);
    }

    /// <summary>The class Akka makes the default journal or snapshot store of (the instance is not reachable from outside).</summary>
    private static string PluginClass(ActorNode node, string plugin) => node.System.Settings.Config.GetString($"akka.persistence.{plugin}.sql.class");

    /// <summary>What the snapshot store answers a recovering actor.</summary>
    private static string Load(ActorNode node, string id, SnapshotSelectionCriteria criteria)
    {
        var probe = node.Kit.CreateTestProbe();
        Akka.Persistence.Persistence.Instance.Apply(node.System).SnapshotStoreFor(null).Tell(new LoadSnapshot(id, criteria, long.MaxValue), probe.Ref);
        return probe.ReceiveOne(TimeSpan.FromSeconds(20)) switch
        {
            LoadSnapshotResult { Snapshot: null } => $"{id} no snapshot",
            LoadSnapshotResult { Snapshot: var s } =>
                $"{s.Metadata.PersistenceId} snapshot #{s.Metadata.SequenceNr} '{s.Snapshot}' at {s.Metadata.Timestamp:O} ({s.Metadata.Timestamp.Kind})",
            var other => throw new InvalidOperationException($"the snapshot store answered {other} to a load of {id}"),
        };
    }

    /// <summary>What the journal tells a recovering actor, one line per message, with every field of each event.</summary>
    private static IEnumerable<string> Replay(ActorNode node, string id, long from, long to, long max)
    {
        var probe = node.Kit.CreateTestProbe();
        Akka.Persistence.Persistence.Instance.Apply(node.System).JournalFor(null).Tell(new ReplayMessages(from, to, max, id, probe.Ref));
        var heard = new List<string> { $"replay {id} {from}..{to} max {max}" };
        while (true)
        {
            switch (probe.ReceiveOne(TimeSpan.FromSeconds(20)))
            {
                case ReplayedMessage { Persistent: var p }:
                    heard.Add($"{p.PersistenceId}#{p.SequenceNr} '{p.Payload}' deleted={p.IsDeleted} manifest={p.Manifest} writer={p.WriterGuid} " +
                              $"at={p.Timestamp} sender={p.Sender}");
                    break;
                case RecoverySuccess success:
                    heard.Add($"{id} highest {success.HighestSequenceNr}");
                    return heard;
                case var other:
                    throw new InvalidOperationException($"the journal answered {other} to a replay of {id}");
            }
        }
    }

    private static void Ask(ActorNode node, IActorRef writer, object command) =>
        Assert.Equal("done", writer.Ask<string>(command, TimeSpan.FromSeconds(30)).GetAwaiter().GetResult());

    private sealed record Write(string Id, int Count);
    private sealed record Delete(string Id, long UpTo);
    private sealed record Snapshot(string Id);

    /// <summary>Writes events and deletions through one persistent actor per id, as the sagas do.</summary>
    private sealed class Writer : ReceiveActor
    {
        public Writer()
        {
            Receive<Write>(w => Child(w.Id).Forward(w));
            Receive<Delete>(d => Child(d.Id).Forward(d));
            Receive<Snapshot>(s => Child(s.Id).Forward(s));
        }

        private IActorRef Child(string id) => Context.Child(id) is var child && !child.IsNobody() ? child : Context.ActorOf(Props.Create(() => new Events(id)), id);
    }

    private sealed class Events : ReceivePersistentActor
    {
        private IActorRef _asker = ActorRefs.Nobody;

        public Events(string id)
        {
            PersistenceId = id;
            Recover<string>(_ => { });
            Command<Write>(w =>
            {
                var from = LastSequenceNr + 1;
                var events = Enumerable.Range(0, w.Count).Select(i => $"{id}-{from + i}").ToList();
                var sender = Sender;
                PersistAll(events, e => { if (e == events[^1]) sender.Tell("done"); });
            });
            Command<Delete>(d =>
            {
                _asker = Sender;
                DeleteMessages(d.UpTo);
            });
            Command<Snapshot>(_ =>
            {
                _asker = Sender;
                SaveSnapshot($"{id}-state-{LastSequenceNr}");
            });
            Command<SaveSnapshotSuccess>(_ => _asker.Tell("done"));
            Command<DeleteMessagesSuccess>(_ => _asker.Tell("done"));
            Command<DeleteMessagesFailure>(f => _asker.Tell($"delete failed: {f.Cause.Message}"));
        }

        public override string PersistenceId { get; }
    }
}
