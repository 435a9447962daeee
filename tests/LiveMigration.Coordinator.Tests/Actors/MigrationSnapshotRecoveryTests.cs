using Akka.Actor;
using LiveMigration.Coordinator.Migration;
using LiveMigration.Coordinator.Persistence;
using LiveMigration.Coordinator.Tests.Migration;
using LiveMigration.Shared.Migration;
using Microsoft.Data.Sqlite;

namespace LiveMigration.Coordinator.Tests.Actors;

/// <summary>
/// A saga that snapshots (here every 2 events) writes its snapshots through the versioned snapshot serializer into
/// the SQLite snapshot store, and a new node on the same files recovers from them to the same state.
/// </summary>
public sealed class MigrationSnapshotRecoveryTests : IAsyncLifetime
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(20);
    private readonly string _dataDirectory = Path.Combine(Path.GetTempPath(), $"lsm-snapshots-{Guid.NewGuid():N}");

    [Fact]
    public async Task A_saga_recovers_from_its_versioned_snapshot_on_a_new_node()
    {
        var saga = new SagaDriver();
        var settings = new MigrationActorSettings(TimeSpan.FromSeconds(30), SnapshotEvery: 2);
        MigrationView before;
        await using (var node = await ActorNode.StartAsync(_dataDirectory))
        {
            var hosts = node.Migration(saga.Id, node.System.ActorOf(MigrationAdmission.Props(MigrationLimits.Default)), settings);
            hosts.Saga.Tell(new StartMigration(saga.Id, saga.Request(), saga.Facts()), node.Kit.TestActor);
            node.Kit.ExpectMsg<MigrationCommandAccepted>(Patience);
            // three steps done, the fourth out: enough events for snapshots, and a state in the middle of the copy
            for (var i = 0; i < 3; i++) hosts.Succeed(hosts.NextStep(Patience));
            Assert.Equal(MigrationStep.WaitMirrorReady, hosts.NextStep(Patience).Operation.Step);
            before = View(node, hosts.Saga, saga.Id);
            await node.System.Terminate();
        }

        var stored = StoredSnapshots();
        Assert.NotEmpty(stored);
        Assert.All(stored, s =>
        {
            Assert.Equal(MigrationSnapshotSerializer.SerializerIdentifier, s.SerializerId);
            Assert.Equal(MigrationSnapshotSerializer.ManifestV1, s.Manifest);
        });

        await using var restarted = await ActorNode.StartAsync(_dataDirectory);
        var again = restarted.Migration(saga.Id, restarted.System.ActorOf(MigrationAdmission.Props(MigrationLimits.Default)), settings);
        var after = View(restarted, again.Saga, saga.Id);
        Assert.Equal(before.Status, after.Status);
        Assert.Equal(before.Disks.Select(d => (d.Image, d.Step, d.Phase, d.Attempt)), after.Disks.Select(d => (d.Image, d.Step, d.Phase, d.Attempt)));
        Assert.Equal(before.Disks.SelectMany(d => d.Timings), after.Disks.SelectMany(d => d.Timings));
    }

    private static MigrationView View(ActorNode node, IActorRef saga, Shared.Model.MigrationId id)
    {
        saga.Tell(new GetMigrationState(id), node.Kit.TestActor);
        return node.Kit.ExpectMsg<MigrationStateReply>(Patience).View;
    }

    private List<(long SerializerId, string Manifest)> StoredSnapshots()
    {
        var rows = new List<(long, string)>();
        using var connection = new SqliteConnection(new SqliteConnectionStringBuilder { DataSource = new JournalOptions(_dataDirectory).SnapshotFile }.ToString());
        connection.Open();
        using var query = connection.CreateCommand();
        query.CommandText = "SELECT serializer_id, manifest FROM snapshot";
        using var reader = query.ExecuteReader();
        while (reader.Read()) rows.Add((reader.GetInt64(0), reader.GetString(1)));
        return rows;
    }

    public Task InitializeAsync() => Task.CompletedTask;

    public Task DisposeAsync()
    {
        SqliteConnection.ClearAllPools();
        if (Directory.Exists(_dataDirectory)) Directory.Delete(_dataDirectory, recursive: true);
        return Task.CompletedTask;
    }
}
