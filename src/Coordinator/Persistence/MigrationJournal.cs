using Akka.Hosting;
using Akka.Persistence.Sql.Hosting;
using LinqToDB;
using Microsoft.Data.Sqlite;

namespace LiveMigration.Coordinator.Persistence;

/// <summary>Where the sagas' journal and snapshots live: SQLite files under <see cref="DataDirectory"/>, or PostgreSQL when a connection string is given.</summary>
public sealed record JournalOptions(string DataDirectory, string? PostgresConnectionString = null)
{
    public string JournalFile => Path.Combine(DataDirectory, "journal.db");
    public string SnapshotFile => Path.Combine(DataDirectory, "snapshots.db");
}

public static class MigrationJournal
{
    /// <summary>
    /// The default journal and snapshot store for every persistent actor of the Coordinator.
    /// Payloads are written by the serializer bound to their type: the events are bound to the protocol
    /// serializer by <c>WithProtocolSerializer()</c>, which the Coordinator chains next to this call
    /// (without it they fall back to Newtonsoft with type names in the journal).
    /// </summary>
    public static AkkaConfigurationBuilder WithMigrationJournal(this AkkaConfigurationBuilder builder, JournalOptions options)
    {
        // The sagas' snapshots, too, are written under a versioned manifest, not CLR type names.
        builder.AddHocon(MigrationSnapshotSerializer.Binding, HoconAddMode.Prepend);
        // The migrations list reads the journal on from its last offset (MigrationCatalog, CurrentAllEvents): such a read
        // ends only once the read side's gap-free maximum reaches the journal's maximum at its start, which it learns by
        // polling every query-delay, and meanwhile it waits refresh-interval between tries; both default to 1 s, so under
        // steady writes a list took just over a second (bench control-plane: list p99 1.2 s with 32 migrations in flight).
        builder.AddHocon("""
            akka.persistence.query.journal.sql.refresh-interval = 50ms
            akka.persistence.query.journal.sql.journal-sequence-retrieval.query-delay = 50ms
            """, HoconAddMode.Prepend);
        if (!string.IsNullOrWhiteSpace(options.PostgresConnectionString))
            return builder.WithSqlPersistence(options.PostgresConnectionString, ProviderName.PostgreSQL15, autoInitialize: true);

        Directory.CreateDirectory(options.DataDirectory);
        var journal = UseWriteAheadLog(options.JournalFile);
        var snapshots = UseWriteAheadLog(options.SnapshotFile);
        builder.WithSqlPersistence(
            new SqlJournalOptions(isDefaultPlugin: true) { ConnectionString = journal, ProviderName = ProviderName.SQLiteMS, AutoInitialize = true },
            new SqlSnapshotOptions(isDefaultPlugin: true) { ConnectionString = snapshots, ProviderName = ProviderName.SQLiteMS, AutoInitialize = true });
        // SQLite takes one writer at a time: more only wait on its lock. Reads are plain (deferred) transactions: by default
        // Microsoft.Data.Sqlite begins every transaction IMMEDIATE, so each replay and each query took the write lock and
        // waited in SQLite's busy loop behind the writer (seen as the sagas' steps waiting tens of ms on BeginTransaction);
        // in WAL mode a deferred reader sees the last commit and never blocks the writer.
        // Events are written and recoveries read by plain SQLite statements (SqliteJournal, SqliteSnapshotStore); deletes, saved
        // snapshots and the read journal's queries are the plugin's.
        return builder.AddHocon($"""
            akka.persistence.journal.sql.class = "{ClassName<SqliteJournal>()}"
            akka.persistence.snapshot-store.sql.class = "{ClassName<SqliteSnapshotStore>()}"
            akka.persistence.journal.sql.parallelism = 1
            akka.persistence.journal.sql.read-isolation-level = read-uncommitted
            akka.persistence.query.journal.sql.read-isolation-level = read-uncommitted
            akka.persistence.snapshot-store.sql.read-isolation-level = read-uncommitted
            """, HoconAddMode.Prepend);
    }

    private static string ClassName<T>() => $"{typeof(T).FullName}, {typeof(T).Assembly.GetName().Name}";

    /// <summary>WAL is a property of the file: set once, before the journal opens it, it stays on (readers do not block the writer).</summary>
    private static string UseWriteAheadLog(string file)
    {
        var connectionString = new SqliteConnectionStringBuilder { DataSource = file }.ToString();
        using var connection = new SqliteConnection(connectionString);
        connection.Open();
        using var pragma = connection.CreateCommand();
        pragma.CommandText = "PRAGMA journal_mode=WAL;";
        pragma.ExecuteNonQuery();
        return connectionString;
    }
}
