using Akka.Actor;
using Akka.Cluster.Hosting;
using Akka.Hosting;
using LiveMigration.Coordinator.Audit;
using LiveMigration.Coordinator.Hosts;
using LiveMigration.Coordinator.Inventory;
using LiveMigration.Coordinator.Migration;
using LiveMigration.Coordinator.Persistence;
using LiveMigration.Shared.Hosting;
using LiveMigration.Shared.Protocol;

namespace LiveMigration.Coordinator.Hosting;

/// <summary>Registry key of the inventory singleton's proxy.</summary>
public sealed class InventoryProxy;

/// <summary>A Coordinator's configuration.</summary>
public sealed record CoordinatorSettings(
    string DataDirectory,
    string? PostgresConnectionString,
    string HttpUrl,
    ClusterNodeSettings Cluster,
    MigrationLimits Limits,
    MigrationActorSettings Actor)
{
    public const string Role = "coordinator";

    /// <summary>When set, every /api/* and /metrics request must carry <c>Authorization: Bearer {ApiToken}</c>.</summary>
    public string? ApiToken { get; init; }

    /// <summary>When set (with <see cref="ApiToken"/>), a token that may read (GET, event streams, metrics) and change nothing.</summary>
    public string? ViewerToken { get; init; }

    /// <summary>The certificate the API serves HTTPS with (its address is https://), or null for plain HTTP on loopback.</summary>
    public System.Security.Cryptography.X509Certificates.X509Certificate2? ApiCertificate { get; init; }

    /// <summary>The API's tokens with their roles, or null when the API has none (loopback only).</summary>
    public Api.ApiTokens? Tokens => ApiToken is null ? null : new Api.ApiTokens(ApiToken, ViewerToken);
}

public static class CoordinatorHosting
{
    /// <summary>
    /// Everything a Coordinator node runs: the journal, the inventory (a persistent cluster singleton over
    /// the coordinators, fed by the hosts' reports), the way to the hosts, the migration shard region with
    /// its admission limits, and the release of a migration's disks when it ends.
    /// </summary>
    public static AkkaConfigurationBuilder WithCoordinator(this AkkaConfigurationBuilder builder, CoordinatorSettings settings)
    {
        var directory = new HostDirectory();
        return builder
            .WithClusterNode(settings.Cluster)
            .WithMigrationJournal(new JournalOptions(settings.DataDirectory, settings.PostgresConnectionString))
            .WithSingleton<InventoryProxy>("inventory", InventoryActor.Props(new InventoryOptions()),
                new ClusterSingletonOptions { Role = CoordinatorSettings.Role }, createProxyToo: true)
            // The API's audit trail: one journal for the cluster, so it lives with the coordinators like the inventory.
            .WithSingleton<AuditProxy>("audit", AuditActor.SupervisedProps(new AuditOptions()),
                new ClusterSingletonOptions { Role = CoordinatorSettings.Role }, createProxyToo: true)
            .WithClusterHosts(directory, registry => registry.Get<InventoryProxy>())
            .WithMigrationSharding((_, registry) => ClusterHostsHosting.Resolve(registry, directory, registry.Get<InventoryProxy>()),
                new MigrationShardingOptions
                {
                    Role = CoordinatorSettings.Role, Limits = settings.Limits, Actor = settings.Actor,
                    // the migrations list's projection (the API's), when this node serves one
                    JournaledRunning = (registry, resolver) => resolver.GetService<MigrationCatalog>() is { } catalog
                        ? MigrationAdmission.Journaled(catalog, vm => directory.LocateAsync(vm, registry.Get<InventoryProxy>(), TimeSpan.FromSeconds(5)))
                        : null,
                })
            .WithActors((system, registry) =>
            {
                system.ActorOf(ReservationReleaser.Props(registry.Get<InventoryProxy>()), "reservation-releaser");
                system.ActorOf(JournalWarmup.Props(), "journal-warmup");
            });
    }
}
