using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using LiveMigration.Coordinator.Persistence;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;
using LiveMigration.Shared.Serialization;
using Microsoft.Data.Sqlite;

namespace LiveMigration.Coordinator.Migration;

/// <summary>Where a Coordinator keeps its migrations list between starts, and which journal the list was read from.</summary>
/// <param name="File">The SQLite file of the list; null keeps it in memory (read from the journal's start at each start).</param>
/// <param name="Source">Names the journal: a list read from another journal is read again from the start.</param>
public sealed record MigrationViewOptions(string? File, string Source)
{
    public static readonly MigrationViewOptions InMemory = new(null, "memory");

    /// <summary>The list of a Coordinator whose journal is <paramref name="journal"/>: beside it in its data directory.</summary>
    public static MigrationViewOptions For(JournalOptions journal) => new(
        Path.Combine(journal.DataDirectory, "migrations-view.db"),
        journal.PostgresConnectionString is { } postgres
            // the connection string holds a password: only a digest of it is written down
            ? "postgres:" + Convert.ToHexString(SHA256.HashData(Encoding.UTF8.GetBytes(postgres)))[..16]
            : "sqlite:" + Path.GetFullPath(journal.JournalFile));
}

/// <summary>One migration as the list holds it: its state after the journal's event <see cref="SequenceNr"/> of it.</summary>
public sealed record MigrationRow(MigrationState State, long SequenceNr);

/// <summary>A row of a page, its state still as written (<see cref="MigrationViewStore.StateOf"/>): read only when no view of it is at hand.</summary>
public sealed record MigrationPageEntry(MigrationId Id, byte[] State);

/// <summary>
/// The read table behind the migrations list: one row per migration (its state as of its last event folded in, with the
/// columns the list sorts and filters on), and the journal ordering the rows are read up to, written in one transaction
/// with them, so a Coordinator that starts again reads on from there instead of from the journal's start, and a
/// Coordinator that runs for months holds in memory only the migrations not finished. It can always be rebuilt from the
/// journal (delete the file): the journal is the truth, this is a view of it.
/// </summary>
public sealed class MigrationViewStore : IDisposable
{
    private const int SchemaVersion = 1;
    private readonly SqliteConnection _connection;

    public MigrationViewStore(MigrationViewOptions options)
    {
        if (options.File is { } file) Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(file))!);
        _connection = new SqliteConnection(new SqliteConnectionStringBuilder { DataSource = options.File ?? ":memory:" }.ToString());
        _connection.Open();
        Execute("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;");
        Execute("CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;");
        if (Meta("schema") != SchemaVersion.ToString() || Meta("source") != options.Source)
        {
            // another layout, or read from another journal (a new PostgreSQL database behind the same data directory): from the start
            Execute("DROP TABLE IF EXISTS migrations; DELETE FROM meta;");
            SetMeta("schema", SchemaVersion.ToString());
            SetMeta("source", options.Source);
        }
        Execute("""
            CREATE TABLE IF NOT EXISTS migrations(
              id TEXT PRIMARY KEY,
              requested INTEGER NOT NULL,
              vm TEXT,
              kind TEXT NOT NULL,
              finished INTEGER NOT NULL,
              seq INTEGER NOT NULL,
              state BLOB NOT NULL);
            CREATE INDEX IF NOT EXISTS migrations_newest ON migrations(requested DESC, id);
            CREATE INDEX IF NOT EXISTS migrations_of_vm ON migrations(vm, requested DESC, id);
            CREATE INDEX IF NOT EXISTS migrations_unfinished ON migrations(finished, requested DESC, id);
            """);
    }

    /// <summary>The journal ordering the rows are read up to (0: nothing read).</summary>
    public long Offset => long.TryParse(Meta("offset"), out var offset) ? offset : 0;

    /// <summary>Which event is at <see cref="Offset"/> (its persistence id and sequence number): what the journal must still hold there.</summary>
    public string? LastRead => Meta("last-read");

    /// <summary>The migrations not finished: what a list folds new events into without reading a row first.</summary>
    public IReadOnlyList<MigrationRow> Unfinished()
    {
        using var command = Command("SELECT seq, state FROM migrations WHERE finished = 0");
        return Rows(command).ToList();
    }

    public MigrationRow? Find(MigrationId id)
    {
        using var command = Command("SELECT seq, state FROM migrations WHERE id = $id");
        command.Parameters.AddWithValue("$id", id.ToString());
        return Rows(command).FirstOrDefault();
    }

    /// <summary>Forgets every row and the offset: read again from the journal's start.</summary>
    public void Clear() => Execute("DELETE FROM migrations; DELETE FROM meta WHERE key IN ('offset', 'last-read');");

    /// <summary>The rows that changed and the ordering they are read up to (and the event there), together or not at all.</summary>
    public void Write(IEnumerable<MigrationRow> changed, long offset, string? lastRead)
    {
        using var transaction = _connection.BeginTransaction();
        using var upsert = Command("""
            INSERT INTO migrations(id, requested, vm, kind, finished, seq, state) VALUES($id, $requested, $vm, $kind, $finished, $seq, $state)
            ON CONFLICT(id) DO UPDATE SET requested = excluded.requested, vm = excluded.vm, kind = excluded.kind,
              finished = excluded.finished, seq = excluded.seq, state = excluded.state
            """);
        upsert.Transaction = transaction;
        var id = upsert.Parameters.Add("$id", SqliteType.Text);
        var requested = upsert.Parameters.Add("$requested", SqliteType.Integer);
        var vm = upsert.Parameters.Add("$vm", SqliteType.Text);
        var kind = upsert.Parameters.Add("$kind", SqliteType.Text);
        var finished = upsert.Parameters.Add("$finished", SqliteType.Integer);
        var seq = upsert.Parameters.Add("$seq", SqliteType.Integer);
        var state = upsert.Parameters.Add("$state", SqliteType.Blob);
        foreach (var row in changed)
        {
            id.Value = row.State.Id.ToString();
            requested.Value = RequestedKey(row.State);
            vm.Value = (object?)row.State.Request?.Vm.ToString() ?? DBNull.Value;
            kind.Value = MigrationCatalog.KindOf(row.State.Status);
            finished.Value = row.State.Status.IsFinished ? 1 : 0;
            seq.Value = row.SequenceNr;
            state.Value = JsonSerializer.SerializeToUtf8Bytes(MigrationSnapshotV1.Of(row.State), ProtocolJson.Options);
            upsert.ExecuteNonQuery();
        }
        SetMeta("offset", offset.ToString(), transaction);
        SetMeta("last-read", lastRead ?? "", transaction);
        transaction.Commit();
    }

    /// <summary>One page, newest request first (ties by id), of the migrations the filter lets through, and how many it lets through.</summary>
    public (IReadOnlyList<MigrationPageEntry> Entries, int Total) Page(bool unfinishedOnly, VmId? vm, string? kind, int offset, int limit)
    {
        var where = "kind <> 'new'" + (unfinishedOnly ? " AND finished = 0" : "") + (vm is null ? "" : " AND vm = $vm") + (kind is null ? "" : " AND kind = $kind");
        void Bind(SqliteCommand command)
        {
            if (vm is { } v) command.Parameters.AddWithValue("$vm", v.ToString());
            if (kind is not null) command.Parameters.AddWithValue("$kind", kind);
        }
        using var count = Command($"SELECT COUNT(*) FROM migrations WHERE {where}");
        Bind(count);
        var total = Convert.ToInt32(count.ExecuteScalar());
        using var page = Command($"SELECT id, state FROM migrations WHERE {where} ORDER BY requested DESC, id LIMIT $limit OFFSET $offset");
        Bind(page);
        page.Parameters.AddWithValue("$limit", limit);
        page.Parameters.AddWithValue("$offset", offset);
        var entries = new List<MigrationPageEntry>();
        using var reader = page.ExecuteReader();
        while (reader.Read())
            entries.Add(new MigrationPageEntry(MigrationId.Parse(reader.GetString(0)), (byte[])reader.GetValue(1)));
        return (entries, total);
    }

    public static MigrationState StateOf(byte[] written) =>
        (JsonSerializer.Deserialize<MigrationSnapshotV1>(written, ProtocolJson.Options)
         ?? throw new InvalidDataException("a migrations-list row holds JSON null")).ToState();

    /// <summary>The request's time as the list sorts it; a migration without a request sorts last.</summary>
    private static long RequestedKey(MigrationState state) => (state.RequestedAt ?? DateTimeOffset.MinValue).UtcTicks;

    private static IEnumerable<MigrationRow> Rows(SqliteCommand command)
    {
        using var reader = command.ExecuteReader();
        while (reader.Read())
            yield return new MigrationRow(StateOf((byte[])reader.GetValue(1)), reader.GetInt64(0));
    }

    private string? Meta(string key)
    {
        using var command = Command("SELECT value FROM meta WHERE key = $key");
        command.Parameters.AddWithValue("$key", key);
        return command.ExecuteScalar() as string;
    }

    private void SetMeta(string key, string value, SqliteTransaction? transaction = null)
    {
        using var command = Command("INSERT INTO meta(key, value) VALUES($key, $value) ON CONFLICT(key) DO UPDATE SET value = excluded.value");
        command.Transaction = transaction;
        command.Parameters.AddWithValue("$key", key);
        command.Parameters.AddWithValue("$value", value);
        command.ExecuteNonQuery();
    }

    private void Execute(string sql)
    {
        using var command = Command(sql);
        command.ExecuteNonQuery();
    }

    private SqliteCommand Command(string sql)
    {
        var command = _connection.CreateCommand();
        command.CommandText = sql;
        return command;
    }

    public void Dispose() => _connection.Dispose();
}
