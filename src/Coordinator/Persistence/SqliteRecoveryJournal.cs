using System.Collections.Concurrent;
using System.Collections.Immutable;
using Akka.Actor;
using Akka.Configuration;
using Akka.Persistence;
using Akka.Persistence.Sql;
using Akka.Persistence.Sql.Config;
using Akka.Persistence.Sql.Journal;
using Microsoft.Data.Sqlite;

namespace LiveMigration.Coordinator.Persistence;

/// <summary>
/// The SQL plugin's journal on SQLite, with the two reads of every recovery (the highest sequence number, then the
/// events) as plain SQLite statements. The plugin builds each as a linq2db query and replays through Akka.Streams stages
/// materialised per recovery: most of the ~1.8 ms of CPU a recovery cost, which set the pace when a restarted Coordinator
/// recovers its sagas all at once (README, Scale). Writes, deletes and the read journal's queries stay the plugin's. The
/// statements read the rows the plugin's queries read, from the table and columns its configuration names, and build
/// the same representations (<c>SqliteRecoveryJournalTests</c> compares the two replays).
/// </summary>
public sealed class SqliteRecoveryJournal : SqlWriteJournal
{
    private readonly Akka.Serialization.Serialization _serialization;
    private readonly string _connectionString;
    private readonly string _highestSql;
    private readonly string _replaySql;
    // The plugin's own read of the highest number first waits for a write of the same id still in flight (an actor that
    // restarted after a write it did not see confirmed); so does this one.
    private readonly ConcurrentDictionary<string, Task> _writing = new();

    public SqliteRecoveryJournal(Config journalConfig) : base(journalConfig)
    {
        _serialization = Context.System.Serialization;
        var config = new JournalConfig(journalConfig.WithFallback(SqlPersistence.DefaultJournalConfiguration));
        if (!config.ProviderName.Contains("sqlite", StringComparison.OrdinalIgnoreCase))
            throw new ConfigurationException($"{nameof(SqliteRecoveryJournal)} reads SQLite only; this journal's provider is {config.ProviderName}");
        if (config.DaoConfig.SqlCommonCompatibilityMode || config.TableConfig.UseEventManifestColumn)
            throw new ConfigurationException($"{nameof(SqliteRecoveryJournal)} reads the plugin's default table layout only (no compatibility mode, no event manifest column)");
        _connectionString = config.ConnectionString;

        var table = config.TableConfig.EventJournalTable;
        var c = table.ColumnNames;
        var name = Quote(table.Name);
        if (config.TableConfig.SchemaName is { Length: > 0 } schema) name = $"{Quote(schema)}.{name}";
        var writer = table.UseWriterUuidColumn ? Quote(c.WriterUuid) : "NULL";
        _highestSql = $"SELECT MAX({Quote(c.SequenceNumber)}) FROM {name} WHERE {Quote(c.PersistenceId)} = $id AND ($from = 0 OR {Quote(c.SequenceNumber)} > $from)";
        _replaySql = $"SELECT {Quote(c.SequenceNumber)}, {Quote(c.Message)}, {Quote(c.Identifier)}, {Quote(c.Manifest)}, {writer}, {Quote(c.Created)} " +
                     $"FROM {name} WHERE {Quote(c.PersistenceId)} = $id AND {Quote(c.SequenceNumber)} >= $from AND {Quote(c.SequenceNumber)} <= $to " +
                     $"AND {Quote(c.Deleted)} = 0 ORDER BY {Quote(c.SequenceNumber)} LIMIT $max";
    }

    internal static string Quote(string identifier) => "\"" + identifier.Replace("\"", "\"\"") + "\"";

    public override async Task<long> ReadHighestSequenceNrAsync(string persistenceId, long fromSequenceNr, CancellationToken cancellationToken)
    {
        if (_writing.TryGetValue(persistenceId, out var write))
            await write.ContinueWith(_ => { }, CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
        // Off the journal actor's thread: the recoveries of many actors read side by side.
        await Task.Yield();
        await using var connection = new SqliteConnection(_connectionString);
        await connection.OpenAsync(cancellationToken);
        await using var command = connection.CreateCommand();
        command.CommandText = _highestSql;
        command.Parameters.AddWithValue("$id", persistenceId);
        command.Parameters.AddWithValue("$from", fromSequenceNr);
        return await command.ExecuteScalarAsync(cancellationToken) is long highest ? highest : 0;
    }

    public override async Task ReplayMessagesAsync(IActorContext context, string persistenceId, long fromSequenceNr, long toSequenceNr, long max,
        Action<IPersistentRepresentation> recoveryCallback)
    {
        if (max <= 0) return;   // SQLite reads a negative LIMIT as none
        await Task.Yield();
        await using var connection = new SqliteConnection(_connectionString);
        await connection.OpenAsync();
        await using var command = connection.CreateCommand();
        command.CommandText = _replaySql;
        command.Parameters.AddWithValue("$id", persistenceId);
        command.Parameters.AddWithValue("$from", fromSequenceNr);
        command.Parameters.AddWithValue("$to", toSequenceNr);
        command.Parameters.AddWithValue("$max", max);
        await using var rows = await command.ExecuteReaderAsync();
        while (await rows.ReadAsync())
        {
            var sequenceNr = rows.GetInt64(0);
            if (rows.IsDBNull(2))
                throw new NotSupportedException($"Event {sequenceNr} of {persistenceId} has no serializer id (written by an older plugin); this journal cannot replay it");
            var manifest = rows.IsDBNull(3) ? null : rows.GetString(3);
            var payload = _serialization.Deserialize((byte[])rows.GetValue(1), rows.GetInt32(2), manifest);
            recoveryCallback(new Persistent(payload, sequenceNr: sequenceNr, persistenceId: persistenceId, manifest: manifest, isDeleted: false,
                sender: ActorRefs.NoSender, writerGuid: rows.IsDBNull(4) ? null : rows.GetString(4), timestamp: rows.GetInt64(5)));
        }
    }

    protected override Task<IImmutableList<Exception>> WriteMessagesAsync(IEnumerable<AtomicWrite> messages, CancellationToken cancellationToken)
    {
        var writes = messages as IReadOnlyList<AtomicWrite> ?? messages.ToList();
        var written = base.WriteMessagesAsync(writes, cancellationToken);
        // Keyed like the plugin's own wait: one persistent actor's writes per call.
        var id = writes[0].PersistenceId;
        _writing[id] = written;
        written.ContinueWith(done => _writing.TryRemove(new KeyValuePair<string, Task>(id, done)), CancellationToken.None,
            TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
        return written;
    }
}
