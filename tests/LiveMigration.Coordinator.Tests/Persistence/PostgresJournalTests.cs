using LiveMigration.Coordinator.Tests.Actors;

namespace LiveMigration.Coordinator.Tests.Persistence;

/// <summary>
/// The journal on PostgreSQL (the several-coordinators setup, DESIGN §6), on a real local server: the migration
/// actor's crash-safety scenario must hold there exactly as on SQLite.
/// </summary>
public sealed class PostgresJournalTests(PostgresServer server) : IClassFixture<PostgresServer>, IAsyncLifetime
{
    private readonly string _dataDirectory = Path.Combine(Path.GetTempPath(), $"lsm-pgj-{Guid.NewGuid():N}");

    [Fact]
    public async Task After_a_stop_mid_step_the_actor_recovered_from_postgresql_sends_the_same_operation_id_and_completes()
    {
        var connectionString = await server.CreateDatabaseAsync();

        await MigrationActorTests.StopMidStepRestartAndComplete(
            () => ActorNode.StartAsync(_dataDirectory, connectionString),
            table => PostgresServer.CountRowsAsync(connectionString, table));

        // the journal went to PostgreSQL, not to the SQLite files of the data directory
        Assert.False(File.Exists(Path.Combine(_dataDirectory, "journal.db")), "a SQLite journal was written although a PostgreSQL connection string was given");
    }

    [Fact]
    public async Task The_catalog_pages_and_catches_up_on_postgresql_too() =>
        await MigrationCatalogAndSpeedTests.CatalogPagesAndCatchesUp(
            async () => await ActorNode.StartAsync(_dataDirectory, await server.CreateDatabaseAsync(), serializeMessages: false));

    public Task InitializeAsync() => Task.CompletedTask;

    public Task DisposeAsync()
    {
        if (Directory.Exists(_dataDirectory))
            Directory.Delete(_dataDirectory, recursive: true);
        return Task.CompletedTask;
    }
}
