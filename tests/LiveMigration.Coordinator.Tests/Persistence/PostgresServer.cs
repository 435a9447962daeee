using LiveMigration.Demo.Bench;
using Npgsql;

namespace LiveMigration.Coordinator.Tests.Persistence;

/// <summary>
/// A real PostgreSQL 15 for the test run (<see cref="ThrowawayPostgres"/>, fsync off: nothing here measures it), stopped
/// and deleted at the end. Missing binaries fail the tests that use it with what to install: the journal's PostgreSQL
/// path is never silently left untested. Each test takes its own database (<see cref="CreateDatabaseAsync"/>).
/// </summary>
public sealed class PostgresServer : IAsyncLifetime
{
    private ThrowawayPostgres? _server;

    public int Port => _server?.Port ?? throw new InvalidOperationException("the PostgreSQL server has not started");

    /// <summary>Connection string of the server's maintenance database.</summary>
    public string AdminConnectionString => ConnectionStringFor("postgres");

    public string ConnectionStringFor(string database) =>
        new NpgsqlConnectionStringBuilder
        {
            Host = "127.0.0.1", Port = Port, Username = ThrowawayPostgres.User, Database = database, Timeout = 15, CommandTimeout = 30,
        }.ToString();

    public async Task InitializeAsync() => _server = await ThrowawayPostgres.StartAsync(durable: false);

    /// <summary>A new empty database for one test, so tests never see each other's journal rows.</summary>
    public async Task<string> CreateDatabaseAsync()
    {
        var name = $"lsm_{Guid.NewGuid():N}";
        await using var connection = new NpgsqlConnection(AdminConnectionString);
        await connection.OpenAsync();
        await using var create = new NpgsqlCommand($"CREATE DATABASE {name}", connection);
        await create.ExecuteNonQueryAsync();
        return ConnectionStringFor(name);
    }

    public static async Task<long> CountRowsAsync(string connectionString, string table)
    {
        await using var connection = new NpgsqlConnection(connectionString);
        await connection.OpenAsync();
        await using var count = new NpgsqlCommand($"SELECT COUNT(*) FROM \"{table}\"", connection);
        return (long)(await count.ExecuteScalarAsync())!;
    }

    public async Task DisposeAsync()
    {
        NpgsqlConnection.ClearAllPools();
        if (_server is not null) await _server.DisposeAsync();
    }
}
