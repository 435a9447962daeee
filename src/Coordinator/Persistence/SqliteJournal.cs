using System.Collections.Concurrent;
using System.Collections.Immutable;
using Akka.Actor;
using Akka.Configuration;
using Akka.Event;
using Akka.Persistence;
using Akka.Persistence.Journal;
using Akka.Persistence.Sql;
using Akka.Persistence.Sql.Config;
using Akka.Persistence.Sql.Journal;
using Akka.Serialization;
using Akka.Util;
using Microsoft.Data.Sqlite;

namespace LiveMigration.Coordinator.Persistence;

/// <summary>
/// The SQL plugin's journal on SQLite, with its reads for a recovery (the highest sequence number, then the events) and
/// its writes done as plain SQLite statements. The plugin builds each read as a linq2db query and replays through
/// Akka.Streams stages materialised per recovery (most of the ~1.8 ms of CPU a recovery cost, which set the pace when a
/// restarted Coordinator recovers its sagas at once), and writes each batch as one INSERT whose text linq2db builds anew
/// with every payload as a literal (a third of the Coordinator's CPU at full throughput; README, Scale). Deletes and the
/// read journal's queries stay the plugin's. Rows are the plugin's rows, in its table and columns as its configuration
/// names them, so either reads what the other wrote (<c>SqliteJournalTests</c> compares the two).
/// </summary>
public sealed class SqliteJournal : SqlWriteJournal
{
    private readonly Akka.Serialization.Serialization _serialization;
    private readonly ExtendedActorSystem _system;
    private readonly string? _defaultSerializer;
    private readonly string? _writerUuid;
    private readonly SqliteJournalWriter _writer;
    private readonly string _connectionString;
    private readonly string _highestSql;
    private readonly string _replaySql;
    // The plugin's own read of the highest number first waits for a write of the same id still in flight (an actor that
    // restarted after a write it did not see confirmed); so does this one.
    private readonly ConcurrentDictionary<string, Task> _writing = new();

    public SqliteJournal(Config journalConfig) : base(journalConfig)
    {
        _system = (ExtendedActorSystem)Context.System;
        _serialization = _system.Serialization;
        var config = new JournalConfig(journalConfig.WithFallback(SqlPersistence.DefaultJournalConfiguration));
        if (!config.ProviderName.Contains("sqlite", StringComparison.OrdinalIgnoreCase))
            throw new ConfigurationException($"{nameof(SqliteJournal)} is for SQLite only; this journal's provider is {config.ProviderName}");
        if (config.DaoConfig.SqlCommonCompatibilityMode || config.TableConfig.UseEventManifestColumn || config.PluginConfig.TagMode != TagMode.TagTable)
            throw new ConfigurationException($"{nameof(SqliteJournal)} knows the plugin's default table layout only (no compatibility mode, no event manifest column, tags in their own table)");
        _connectionString = ConnectionStringOf(_system, config.ConnectionString, nameof(SqliteJournal));
        _defaultSerializer = config.DefaultSerializer;

        var table = config.TableConfig.EventJournalTable;
        var c = table.ColumnNames;
        var name = Quote(table.Name);
        if (config.TableConfig.SchemaName is { Length: > 0 } schema) name = $"{Quote(schema)}.{name}";
        var writerRead = table.UseWriterUuidColumn ? Quote(c.WriterUuid) : "NULL";
        _highestSql = $"SELECT MAX({Quote(c.SequenceNumber)}) FROM {name} WHERE {Quote(c.PersistenceId)} = $id AND ($from = 0 OR {Quote(c.SequenceNumber)} > $from)";
        // Like the plugin: one writer id per journal instance, in the column when the table has it.
        _writerUuid = table.UseWriterUuidColumn ? Guid.NewGuid().ToString("N") : null;
        var writerColumn = table.UseWriterUuidColumn ? $", {Quote(c.WriterUuid)}" : "";
        var writerValue = table.UseWriterUuidColumn ? ", $writer" : "";
        _writer = new SqliteJournalWriter(_connectionString,
            $"INSERT INTO {name} ({Quote(c.PersistenceId)}, {Quote(c.SequenceNumber)}, {Quote(c.Message)}, {Quote(c.Manifest)}, {Quote(c.Identifier)}, " +
            $"{Quote(c.Created)}, {Quote(c.Deleted)}{writerColumn}) VALUES ($id, $nr, $message, $manifest, $serializer, $created, 0{writerValue})",
            config.DaoConfig.BatchSize, Context.GetLogger());
        _replaySql = $"SELECT {Quote(c.SequenceNumber)}, {Quote(c.Message)}, {Quote(c.Identifier)}, {Quote(c.Manifest)}, {writerRead}, {Quote(c.Created)} " +
                     $"FROM {name} WHERE {Quote(c.PersistenceId)} = $id AND {Quote(c.SequenceNumber)} >= $from AND {Quote(c.SequenceNumber)} <= $to " +
                     $"AND {Quote(c.Deleted)} = 0 ORDER BY {Quote(c.SequenceNumber)} LIMIT $max";
    }

    /// <summary>Quoted as linq2db quotes for SQLite, so a name the table lacks is an error whatever SQLite was built with.</summary>
    internal static string Quote(string identifier) => "[" + identifier.Replace("]", "]]") + "]";

    /// <summary>
    /// The plugin's connection string, refused when the plugin would use another database: a setup of linq2db options in
    /// code overrides the configured string for the plugin, not for these statements.
    /// </summary>
    internal static string ConnectionStringOf(ActorSystem system, string? connectionString, string what)
    {
        if (system.Settings.Setup.Get<DataOptionsSetup>().HasValue || system.Settings.Setup.Get<MultiDataOptionsSetup>().HasValue)
            throw new ConfigurationException($"{what} reads and writes by the configured connection string; a DataOptionsSetup would point the plugin elsewhere");
        if (string.IsNullOrWhiteSpace(connectionString))
            throw new ConfigurationException($"{what} needs a connection string");
        return connectionString;
    }

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
        // No row is 0, as for the plugin; anything but a number is a fault, never "a new actor".
        return await command.ExecuteScalarAsync(cancellationToken) switch
        {
            null or DBNull => 0,
            long highest => highest,
            var other => throw new InvalidDataException($"The highest sequence number of {persistenceId} read as {other} ({other.GetType().Name})"),
        };
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
        if (writes.Count == 0) return Task.FromResult<IImmutableList<Exception>>(null!);   // a batch of deferred messages only
        var written = WriteAsync(writes, cancellationToken);
        // One persistent actor's writes per call: a recovery of that id waits for them (ReadHighestSequenceNrAsync).
        var id = writes[0].PersistenceId;
        _writing[id] = written;
        written.ContinueWith(done => _writing.TryRemove(new KeyValuePair<string, Task>(id, done)), CancellationToken.None,
            TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
        return written;
    }

    /// <summary>
    /// Each atomic write whose events all serialize is written, in one transaction with the others; one that does not is
    /// rejected alone (its actor hears why and goes on), as the plugin does. A failed transaction fails them all.
    /// </summary>
    private async Task<IImmutableList<Exception>> WriteAsync(IReadOnlyList<AtomicWrite> writes, CancellationToken givenUp)
    {
        var now = DateTime.UtcNow.Ticks;
        var rows = new List<SqliteJournalWriter.Row>();
        var rejections = new Exception?[writes.Count];
        for (var i = 0; i < writes.Count; i++)
        {
            var write = writes[i];
            if (write.Payload is not IImmutableList<IPersistentRepresentation> events)
            {
                rejections[i] = new ArgumentNullException(nameof(writes), $"{write.PersistenceId} received empty payload for sequenceNr range {write.LowestSequenceNr} - {write.HighestSequenceNr}");
                continue;
            }
            var before = rows.Count;
            try
            {
                foreach (var e in events) rows.Add(ToRow(e, now));
            }
            catch (Exception e)
            {
                rows.RemoveRange(before, rows.Count - before);
                rejections[i] = e;
            }
        }
        if (rows.Count > 0) await _writer.WriteAsync(rows, givenUp);
        return rejections.All(r => r is null) ? null! : ImmutableList.CreateRange(rejections.Select(r => r!));
    }

    /// <summary>The plugin's row of an event: its payload by the serializer bound to its type, the manifest that serializer asks for.</summary>
    private SqliteJournalWriter.Row ToRow(IPersistentRepresentation e, long now)
    {
        var payload = e.Payload;
        if (payload is Tagged tagged)
        {
            // Tags would need the plugin's tag table, which nothing of ours reads; refused rather than dropped.
            if (tagged.Tags.Count > 0)
                throw new NotSupportedException($"{nameof(SqliteJournal)} does not write tags (event {e.SequenceNr} of {e.PersistenceId} is tagged {string.Join(", ", tagged.Tags)})");
            payload = tagged.Payload;
        }
        var serializer = _serialization.FindSerializerForType(payload.GetType(), _defaultSerializer);
        var (manifest, bytes) = Akka.Serialization.Serialization.WithTransport(_system, (serializer, payload), state =>
        (
            state.serializer is SerializerWithStringManifest named ? named.Manifest(state.payload)
                : state.serializer.IncludeManifest ? state.payload.GetType().TypeQualifiedName() : string.Empty,
            state.serializer.ToBinary(state.payload)
        ));
        return new SqliteJournalWriter.Row(e.PersistenceId, e.SequenceNr, bytes, manifest, serializer.Identifier, _writerUuid,
            e.Timestamp == 0 ? now : e.Timestamp);
    }

    protected override void PostStop()
    {
        _writer.Stop();
        base.PostStop();
    }
}
