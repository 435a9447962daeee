using Akka.Actor;
using Akka.Cluster.Hosting;
using Akka.Cluster.Sharding;
using Akka.Cluster.Tools.PublishSubscribe;
using Akka.DependencyInjection;
using Akka.Hosting;
using LiveMigration.Shared.Model;

namespace LiveMigration.Coordinator.Migration;

/// <summary>The registry key of the <c>migration</c> shard region.</summary>
public sealed class MigrationRegion;

public sealed record MigrationShardingOptions
{
    /// <summary>About ten per expected coordinator node; never change it on a cluster with data (it moves entities).</summary>
    public int ShardCount { get; init; } = 30;
    public string Role { get; init; } = "coordinator";
    public MigrationActorSettings Actor { get; init; } = MigrationActorSettings.Default;
    public MigrationLimits Limits { get; init; } = MigrationLimits.Default;
    /// <summary>The migrations the journal has running, which the admission limits count when they start; null: none.</summary>
    public Func<IActorRegistry, IDependencyResolver, RunningMigrations?>? JournaledRunning { get; init; }
}

public static class MigrationHosting
{
    /// <summary>
    /// The <c>migration</c> shard region (remember-entities on the event-sourced store, state in DData) and the
    /// <see cref="MigrationAdmission"/> limits as a cluster singleton on the same role (its proxy is in the
    /// registry under <see cref="MigrationAdmission"/>). <paramref name="hosts"/> tells the sagas how to reach
    /// the SPM and the HSMs.
    /// </summary>
    public static AkkaConfigurationBuilder WithMigrationSharding(
        this AkkaConfigurationBuilder builder,
        Func<ActorSystem, IActorRegistry, IMigrationHosts> hosts,
        MigrationShardingOptions? options = null)
    {
        options ??= new MigrationShardingOptions();
        var settings = options.Actor with { PublishToCluster = true, PassivateWhenIdle = true };
        builder.WithSingleton<MigrationAdmission>("migration-admission",
            (system, registry, resolver) => MigrationAdmission.Props(options.Limits, () => registry.TryGet<MigrationRegion>(out var region) ? region : null,
                announceTo: DistributedPubSub.Get(system).Mediator, settleTime: MigrationAdmission.DefaultSettleTime,
                journaled: options.JournaledRunning?.Invoke(registry, resolver)),
            new ClusterSingletonOptions { Role = options.Role },
            createProxyToo: true);
        return builder.WithShardRegion<MigrationRegion>("migration",
            (system, registry, _) =>
            {
                var reach = hosts(system, registry);
                var admission = registry.Get<MigrationAdmission>();
                return entityId => MigrationActor.Props(MigrationId.Parse(entityId), reach, admission, settings);
            },
            new MigrationMessageExtractor(options.ShardCount),
            new ShardOptions
            {
                Role = options.Role,
                RememberEntities = true,
                // the DData remember-entities store hangs here (LightningDB), see PACKAGES.md
                RememberEntitiesStore = RememberEntitiesStore.Eventsourced,
                StateStoreMode = StateStoreMode.DData,
            });
    }
}
