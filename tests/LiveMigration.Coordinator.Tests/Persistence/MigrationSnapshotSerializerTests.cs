using Akka.Actor;
using LiveMigration.Coordinator.Migration;
using LiveMigration.Coordinator.Persistence;
using LiveMigration.Coordinator.Tests.Simulation;
using LiveMigration.Shared.Migration;

namespace LiveMigration.Coordinator.Tests.Persistence;

/// <summary>
/// A saga's snapshot is written in the protocol's JSON under <c>lm.MigrationSnapshot.v1</c> (no CLR type names), and
/// reads back to the same state at every point of a migration's life: the simulation's journals give states of every
/// kind (queued, running, retrying, rolling back, suspended, each end, with probes and resumes).
/// </summary>
public sealed class MigrationSnapshotSerializerTests : IDisposable
{
    private readonly ActorSystem _system = ActorSystem.Create("snapshots", MigrationSnapshotSerializer.Binding);

    public void Dispose() => _system.Dispose();

    [Fact]
    public void The_saga_state_is_bound_to_the_versioned_snapshot_serializer()
    {
        var state = MigrationState.Initial(new Shared.Model.MigrationId(Guid.NewGuid()));
        var serializer = _system.Serialization.FindSerializerFor(state);
        Assert.IsType<MigrationSnapshotSerializer>(serializer);
        Assert.Equal(MigrationSnapshotSerializer.ManifestV1, Akka.Serialization.Serialization.ManifestFor(serializer, state));
        var json = System.Text.Encoding.UTF8.GetString(serializer.ToBinary(state));
        Assert.DoesNotContain("LiveMigration.", json); // no CLR names in what is stored
        Assert.Contains("\"kind\":\"new\"", json);
    }

    [Theory]
    [InlineData(MigrationStrategy.PreCopy)]
    [InlineData(MigrationStrategy.PostCopy)]
    public void Every_state_of_simulated_migrations_reads_back_equal(MigrationStrategy strategy)
    {
        var serializer = (MigrationSnapshotSerializer)_system.Serialization.FindSerializerForType(typeof(MigrationState));
        var kinds = new HashSet<string>();
        var terminations = 0;
        for (var seed = 1; seed <= 150; seed++)
        {
            var result = new SagaSimulator(seed, strategy: strategy, disks: 2, trace: false).Run();
            if (result.Journal.Count == 0) continue;
            var id = result.Journal[0].MigrationId;
            var state = MigrationState.Initial(id);
            foreach (var e in result.Journal)
            {
                state = MigrationState.Apply(state, e);
                var read = (MigrationState)serializer.FromBinary(serializer.ToBinary(state), MigrationSnapshotSerializer.ManifestV1);
                Assert.Equal(state, read);
                Assert.Equal(state.Termination, read.Termination);
                kinds.Add(state.Status.GetType().Name);
                if (state.Termination is not null) terminations++;
            }
        }
        // The seeds went through every kind of status, so each has been read back at least once.
        Assert.Superset(new HashSet<string> { "Queued", "Running", "RollingBack", "Suspended", "Completed" }, kinds);
        Assert.True(terminations > 0, "no rollback among the seeds: the termination field was never read back");
    }

    [Fact]
    public void A_snapshot_of_an_unknown_manifest_or_a_broken_payload_is_refused_with_its_reason()
    {
        var serializer = new MigrationSnapshotSerializer((ExtendedActorSystem)_system);
        var wrong = Assert.Throws<System.Runtime.Serialization.SerializationException>(() => serializer.FromBinary("{}"u8.ToArray(), "lm.MigrationSnapshot.v9"));
        Assert.Contains("lm.MigrationSnapshot.v9", wrong.Message);
        // A suspension without its step and reason: named, not read as some other state.
        var json = System.Text.Encoding.UTF8.GetString(serializer.ToBinary(MigrationState.Initial(new Shared.Model.MigrationId(Guid.NewGuid()))))
            .Replace("\"kind\":\"new\"", "\"kind\":\"suspended\"");
        var broken = Assert.Throws<System.Runtime.Serialization.SerializationException>(() =>
            serializer.FromBinary(System.Text.Encoding.UTF8.GetBytes(json), MigrationSnapshotSerializer.ManifestV1));
        Assert.Contains("'suspended' status needs", broken.Message);
    }
}
