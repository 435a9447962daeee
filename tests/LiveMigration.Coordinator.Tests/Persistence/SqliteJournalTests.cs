using Akka.Actor;
using Akka.Persistence;
using LiveMigration.Coordinator.Persistence;
using Akka.Persistence.Journal;
using LiveMigration.Coordinator.Tests.Actors;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;
using Microsoft.Data.Sqlite;

namespace LiveMigration.Coordinator.Tests.Persistence;

/// <summary>
/// The Coordinator's SQLite journal reads recoveries and writes events with its own statements (<see cref="SqliteJournal"/>):
/// what a recovering actor is told must be exactly what the plugin's own journal tells it, on the same file, in every
/// shape a recovery asks for (from a snapshot on, up to a number, at most N, deleted events, more events than the plugin
/// reads in one batch, an id with no events), and likewise the snapshot a recovery starts from; the rows it writes must
/// be the rows the plugin writes.
/// </summary>
public sealed class SqliteJournalTests : IDisposable
{
    private const string PluginsOwnJournal = """
        akka.persistence.journal.sql.class = "Akka.Persistence.Sql.Journal.SqlWriteJournal, Akka.Persistence.Sql"
        akka.persistence.snapshot-store.sql.class = "Akka.Persistence.Sql.Snapshot.SqlSnapshotStore, Akka.Persistence.Sql"
        """;
    private readonly string _dir = Directory.CreateTempSubdirectory("lsm-sqlite-journal-").FullName;

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
        ("shapes", 1, long.MaxValue, long.MaxValue),    // a protocol event and an empty payload
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
            Assert.StartsWith(typeof(SqliteJournal).FullName + ",", PluginClass(node, "journal"));
            Assert.StartsWith(typeof(SqliteSnapshotStore).FullName + ",", PluginClass(node, "snapshot-store"));
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
            Ask(node, writer, new WriteEvents("shapes", [new MigrationAdmitted(MigrationId.Parse("6f1c1c8e-7f55-4a57-9d37-6a3d5f1d2c11"), DateTimeOffset.UnixEpoch), Array.Empty<byte>()]));
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
        Assert.Contains(ours, l => l.StartsWith("shapes#1 'MigrationAdmitted { MigrationId = 6f1c1c8e") && l.Contains("manifest=lm.MigrationAdmitted.v1"));
        Assert.Contains(ours, l => l.StartsWith("shapes#2 'bytes[]' "));
        Assert.StartsWith("plain snapshot #5 'plain-state-5' at ", ours[0]);
        Assert.StartsWith("plain snapshot #3 'plain-state-3' at ", ours[1]);
        Assert.StartsWith("plain snapshot #5 ", ours[2]);   // the plugin reads the latest whatever the lower bounds say
        Assert.Equal("none no snapshot", ours[3]);
    }

    [Fact]
    public async Task Events_are_written_as_the_rows_the_plugin_writes()
    {
        var ours = Path.Combine(_dir, "ours");
        var plugins = Path.Combine(_dir, "plugins");
        var started = DateTime.UtcNow.Ticks;
        foreach (var (dir, hocon) in new[] { (ours, (string?)null), (plugins, PluginsOwnJournal) })
        {
            await using var node = await ActorNode.StartAsync(dir, serializeMessages: false, hocon: hocon);
            var writer = node.System.ActorOf(Props.Create(() => new Writer()));
            Ask(node, writer, new Write("a", 3));
            Ask(node, writer, new Write("b", 1));
            Ask(node, writer, new Write("a", 250));   // more than one batch of the plugin's (100 rows)
        }
        var finished = DateTime.UtcNow.Ticks;

        var ourRows = Rows(ours);
        Assert.Equal(Rows(plugins).Select(r => r.Comparable), ourRows.Select(r => r.Comparable));
        Assert.Equal(254, ourRows.Count);
        Assert.All(ourRows, r => Assert.InRange(r.Created, started, finished));
        Assert.Single(ourRows.Select(r => r.Writer).Distinct());
        Assert.Matches("^[0-9a-f]{32}$", ourRows[0].Writer);
        Assert.Equal(Enumerable.Range(1, 254).Select(i => (long)i), ourRows.Select(r => r.Ordering));
    }

    [Fact]
    public async Task A_tagged_event_is_refused_and_its_actor_writes_on()
    {
        await using var node = await ActorNode.StartAsync(_dir, serializeMessages: false);
        var writer = node.System.ActorOf(Props.Create(() => new Writer()));
        var refused = await writer.Ask<string>(new WriteTagged("t", "tagged-1", "some-tag"), TimeSpan.FromSeconds(30));
        Assert.Contains("does not write tags", refused);
        Ask(node, writer, new Write("t", 1));

        // The refused event used its number, as any rejected write does; nothing of it was written.
        Assert.Equal(["t#2 't-2'"], Replay(node, "t", 1, long.MaxValue, long.MaxValue).Skip(1).SkipLast(1).Select(l => l[..l.IndexOf(" deleted=", StringComparison.Ordinal)]));
    }

    [Fact]
    public async Task An_actor_that_restarts_before_its_write_is_confirmed_recovers_with_that_write()
    {
        await using var node = await ActorNode.StartAsync(_dir, serializeMessages: false);
        var probe = node.Kit.CreateTestProbe();
        var actor = node.System.ActorOf(Props.Create(() => new CrashesAfterWriting("crashing", probe.Ref)));
        Assert.Equal(0L, probe.ExpectMsg<long>(TimeSpan.FromSeconds(20)));

        // Another connection holds SQLite's write lock, so the write waits; a reader is not held by it (WAL).
        await using (var locker = new SqliteConnection(new SqliteConnectionStringBuilder { DataSource = Path.Combine(_dir, "journal.db"), Pooling = false }.ToString()))
        {
            locker.Open();
            await using var hold = locker.CreateCommand();
            hold.CommandText = "BEGIN IMMEDIATE";
            hold.ExecuteNonQuery();
            actor.Tell("write and crash");
            // The restarted incarnation's recovery waits for its predecessor's write rather than read past it.
            probe.ExpectNoMsg(TimeSpan.FromMilliseconds(500));
            hold.CommandText = "ROLLBACK";
            hold.ExecuteNonQuery();
        }
        Assert.Equal(1L, probe.ExpectMsg<long>(TimeSpan.FromSeconds(20)));
    }

    /// <summary>Hands an event to the journal and throws before hearing back; each incarnation reports where it recovered to.</summary>
    private sealed class CrashesAfterWriting : ReceivePersistentActor
    {
        public CrashesAfterWriting(string id, IActorRef probe)
        {
            PersistenceId = id;
            Recover<string>(_ => { });
            Recover<RecoveryCompleted>(_ => probe.Tell(LastSequenceNr));
            Command<string>(_ =>
            {
                PersistAsync($"event {LastSequenceNr + 1}", _ => { });
                throw new InvalidOperationException("crash after handing the write over");
            });
        }

        public override string PersistenceId { get; }
    }

    [Fact]
    public async Task Many_actors_writing_at_once_get_the_plugins_rows_in_each_actors_order()
    {
        var ours = Path.Combine(_dir, "ours");
        var plugins = Path.Combine(_dir, "plugins");
        foreach (var (dir, hocon) in new[] { (ours, (string?)null), (plugins, PluginsOwnJournal) })
        {
            await using var node = await ActorNode.StartAsync(dir, serializeMessages: false, hocon: hocon);
            var writer = node.System.ActorOf(Props.Create(() => new Writer()));
            // 30 actors at once, three writes each, some larger than the plugin's batch of 100 rows: transactions of many writes.
            await Task.WhenAll(Enumerable.Range(0, 30).Select(async a =>
            {
                foreach (var count in new[] { 5, a % 10 == 0 ? 120 : 7, 3 })
                    Assert.Equal("done", await writer.Ask<string>(new Write($"actor-{a}", count), TimeSpan.FromSeconds(30)));
            }));
        }

        var ourRows = Rows(ours);
        Assert.Equal(Rows(plugins).Select(r => r.Comparable).Order(), ourRows.Select(r => r.Comparable).Order());
        Assert.Equal(3 * 128 + 27 * 15, ourRows.Count);
        foreach (var actor in ourRows.GroupBy(r => r.Comparable[..r.Comparable.IndexOf('#')]))
            Assert.Equal(actor.OrderBy(r => r.Ordering).Select(r => r.Comparable), actor.OrderBy(r => SequenceNr(r.Comparable)).Select(r => r.Comparable));
    }

    [Fact]
    public async Task A_write_whose_number_is_taken_fails_alone()
    {
        await using var node = await ActorNode.StartAsync(_dir, serializeMessages: false);
        var writer = node.System.ActorOf(Props.Create(() => new Writer()));
        var ids = Enumerable.Range(0, 20).Select(a => $"other-{a}").Append("taken").ToList();
        foreach (var id in ids) Ask(node, writer, new Write(id, 1));
        await using var connection = new SqliteConnection(new SqliteConnectionStringBuilder { DataSource = Path.Combine(_dir, "journal.db"), Pooling = false }.ToString());
        connection.Open();
        await using var sql = connection.CreateCommand();
        // Someone else wrote #2 of "taken" behind its back (what two writers of one id would do).
        sql.CommandText = "INSERT INTO journal (persistence_id, sequence_number, message, manifest, identifier, created, deleted) " +
                          "SELECT persistence_id, 2, message, manifest, identifier, created, 0 FROM journal WHERE persistence_id = 'taken'";
        Assert.Equal(1, sql.ExecuteNonQuery());

        // SQLite's write lock held here: the writer waits on a first write while all the others queue up behind it,
        // so they share the next transaction with the write that breaks the table's key.
        sql.CommandText = "BEGIN IMMEDIATE";
        sql.ExecuteNonQuery();
        var first = writer.Ask<string>(new Write("first", 1), TimeSpan.FromSeconds(30));
        await Task.Delay(200);
        var answers = ids.Select(id => writer.Ask<string>(new Write(id, 3), TimeSpan.FromSeconds(30))).ToList();
        await Task.Delay(500);
        sql.CommandText = "ROLLBACK";
        sql.ExecuteNonQuery();

        Assert.Equal("done", await first);
        Assert.StartsWith("failed: ", await answers[^1]);
        Assert.All(await Task.WhenAll(answers.SkipLast(1)), answer => Assert.Equal("done", answer));
        Assert.Equal(20 * 4, Rows(_dir).Count(r => r.Comparable.StartsWith("other-")));
        Assert.Equal(2, Rows(_dir).Count(r => r.Comparable.StartsWith("taken#")));   // its own #1 and the planted #2, none of its #2..#4
        Ask(node, writer, new Write("after", 1));   // the writer goes on
    }

    private static long SequenceNr(string comparable) => long.Parse(comparable[(comparable.IndexOf('#') + 1)..comparable.IndexOf(' ')]);

    private sealed record JournalRowRead(long Ordering, string Comparable, long Created, string? Writer);

    private static List<JournalRowRead> Rows(string dir)
    {
        using var connection = new SqliteConnection(new SqliteConnectionStringBuilder { DataSource = Path.Combine(dir, "journal.db"), Pooling = false }.ToString());
        connection.Open();
        using var command = connection.CreateCommand();
        command.CommandText = "SELECT ordering, persistence_id, sequence_number, hex(message), manifest, identifier, deleted, typeof(created), created, writer_uuid " +
                              "FROM journal WHERE persistence_id <> 'lsm-journal-warmup' ORDER BY ordering";
        using var reader = command.ExecuteReader();
        var rows = new List<JournalRowRead>();
        while (reader.Read())
            rows.Add(new JournalRowRead(reader.GetInt64(0),
                $"{reader.GetString(1)}#{reader.GetInt64(2)} {reader.GetString(3)} manifest={reader.GetValue(4)} serializer={reader.GetValue(5)} deleted={reader.GetValue(6)} created:{reader.GetString(7)}",
                reader.GetInt64(8), reader.IsDBNull(9) ? null : reader.GetString(9)));
        return rows;
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
                    heard.Add($"{p.PersistenceId}#{p.SequenceNr} '{(p.Payload is byte[] bytes ? $"bytes[{Convert.ToHexString(bytes)}]" : p.Payload)}' deleted={p.IsDeleted} manifest={p.Manifest} writer={p.WriterGuid} " +
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
    private sealed record WriteTagged(string Id, string Event, string Tag);
    private sealed record WriteEvents(string Id, object[] Events);

    /// <summary>Writes events and deletions through one persistent actor per id, as the sagas do.</summary>
    private sealed class Writer : ReceiveActor
    {
        public Writer()
        {
            Receive<Write>(w => Child(w.Id).Forward(w));
            Receive<Delete>(d => Child(d.Id).Forward(d));
            Receive<Snapshot>(s => Child(s.Id).Forward(s));
            Receive<WriteTagged>(t => Child(t.Id).Forward(t));
            Receive<WriteEvents>(w => Child(w.Id).Forward(w));
        }

        private IActorRef Child(string id) => Context.Child(id) is var child && !child.IsNobody() ? child : Context.ActorOf(Props.Create(() => new Events(id)), id);
    }

    private sealed class Events : ReceivePersistentActor
    {
        private IActorRef _asker = ActorRefs.Nobody;

        public Events(string id)
        {
            PersistenceId = id;
            RecoverAny(_ => { });
            Command<Write>(w =>
            {
                var from = LastSequenceNr + 1;
                var events = Enumerable.Range(0, w.Count).Select(i => $"{id}-{from + i}").ToList();
                var sender = _asker = Sender;
                PersistAll(events, e => { if (e == events[^1]) sender.Tell("done"); });
            });
            Command<Delete>(d =>
            {
                _asker = Sender;
                DeleteMessages(d.UpTo);
            });
            Command<WriteEvents>(w =>
            {
                var sender = Sender;
                PersistAll(w.Events, e => { if (ReferenceEquals(e, w.Events[^1])) sender.Tell("done"); });
            });
            Command<WriteTagged>(t =>
            {
                _asker = Sender;
                Persist(new Tagged(t.Event, [t.Tag]), _ => _asker.Tell("written"));
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

        protected override void OnPersistRejected(Exception cause, object @event, long sequenceNr) => _asker.Tell($"refused: {cause.Message}");

        protected override void OnPersistFailure(Exception cause, object @event, long sequenceNr)
        {
            _asker.Tell($"failed: {cause.Message}");
            base.OnPersistFailure(cause, @event, sequenceNr);
        }

        public override string PersistenceId { get; }
    }
}
