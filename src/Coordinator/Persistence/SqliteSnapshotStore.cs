using Akka.Configuration;
using Akka.Persistence;
using Akka.Persistence.Sql;
using Akka.Persistence.Sql.Config;
using Akka.Persistence.Sql.Snapshot;
using Microsoft.Data.Sqlite;
using static LiveMigration.Coordinator.Persistence.SqliteJournal;

namespace LiveMigration.Coordinator.Persistence;

/// <summary>
/// The SQL plugin's snapshot store on SQLite, with the read every recovery starts with (the latest snapshot of an id) as
/// a plain SQLite statement, for the reason <see cref="SqliteJournal"/> gives. Any other selection, saves and
/// deletes stay the plugin's (<c>SqliteJournalTests</c> compares the two).
/// </summary>
public sealed class SqliteSnapshotStore : SqlSnapshotStore
{
    private readonly Akka.Serialization.Serialization _serialization;
    private readonly string _connectionString;
    private readonly string _latestSql;

    public SqliteSnapshotStore(Config snapshotConfig) : base(snapshotConfig)
    {
        _serialization = Context.System.Serialization;
        var config = new SnapshotConfig(snapshotConfig.WithFallback(SqlPersistence.DefaultSnapshotConfiguration));
        if (!config.ProviderName.Contains("sqlite", StringComparison.OrdinalIgnoreCase))
            throw new ConfigurationException($"{nameof(SqliteSnapshotStore)} is for SQLite only; this store's provider is {config.ProviderName}");
        _connectionString = ConnectionStringOf(Context.System, config.ConnectionString, nameof(SqliteSnapshotStore));
        var table = config.TableConfig.SnapshotTable;
        var c = table.ColumnNames;
        var name = Quote(table.Name);
        if (config.TableConfig.SchemaName is { Length: > 0 } schema) name = $"{Quote(schema)}.{name}";
        _latestSql = $"SELECT {Quote(c.SequenceNumber)}, {Quote(c.Created)}, {Quote(c.Snapshot)}, " +
                     $"{Quote(c.Manifest)}, {Quote(c.SerializerId)} FROM {name} " +
                     $"WHERE {Quote(c.PersistenceId)} = $id ORDER BY {Quote(c.SequenceNumber)} DESC LIMIT 1";
    }

    protected override async Task<SelectedSnapshot?> LoadAsync(string persistenceId, SnapshotSelectionCriteria criteria, CancellationToken cancellationToken)
    {
        // The plugin reads the latest snapshot whenever neither bound is set, whatever the lower bounds say; so does this.
        if (criteria.MaxSequenceNr != long.MaxValue || criteria.MaxTimeStamp != DateTime.MaxValue)
            return await base.LoadAsync(persistenceId, criteria, cancellationToken);
        await Task.Yield();   // off the store actor's thread, as in the journal
        await using var connection = new SqliteConnection(_connectionString);
        await connection.OpenAsync(cancellationToken);
        await using var command = connection.CreateCommand();
        command.CommandText = _latestSql;
        command.Parameters.AddWithValue("$id", persistenceId);
        await using var row = await command.ExecuteReaderAsync(cancellationToken);
        if (!await row.ReadAsync(cancellationToken)) return null;
        // A snapshot written without a serializer id (an older plugin) is the plugin's to read.
        if (row.IsDBNull(4)) return await base.LoadAsync(persistenceId, criteria, cancellationToken);
        var metadata = new SnapshotMetadata(persistenceId, row.GetInt64(0), new DateTime(row.GetInt64(1)));
        var snapshot = _serialization.Deserialize((byte[])row.GetValue(2), row.GetInt32(4), row.IsDBNull(3) ? null : row.GetString(3));
        return new SelectedSnapshot(metadata, snapshot);
    }
}
