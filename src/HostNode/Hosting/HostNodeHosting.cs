using Akka.Actor;
using Akka.Cluster.Hosting;
using Akka.Cluster.Tools.Singleton;
using Akka.Coordination;
using Akka.Cluster.Tools.PublishSubscribe;
using Akka.Event;
using Akka.Hosting;
using LiveMigration.HostNode.Hsm;
using LiveMigration.HostNode.Hypervisor;
using LiveMigration.HostNode.Inventory;
using LiveMigration.HostNode.Management;
using LiveMigration.HostNode.Spm;
using LiveMigration.HostNode.Storage;
using LiveMigration.Shared.Protocol;

namespace LiveMigration.HostNode.Hosting;

/// <summary>What a host works with: the storage domains it sees and its hypervisor (real or sim).</summary>
public sealed record HostNodeComponents(string HostId, StoragePool Pool, IHypervisor Hypervisor);

/// <summary>What the operator's commands keep on a host, under its data directory: the VMs it owns, the domain roots it learned, the guest ledgers.</summary>
public sealed record HostManagement(VmCatalog Catalog, DomainRoots Roots, GuestIo GuestIo)
{
    public static HostManagement Under(string dataDirectory) =>
        new(new VmCatalog(dataDirectory), new DomainRoots(dataDirectory), new GuestIo(dataDirectory));
}

/// <summary>Registry keys for the host's actors.</summary>
public sealed class HsmKey;
public sealed class SpmKey;
/// <summary>The Coordinator's inventory singleton, as this host reaches it.</summary>
public sealed class InventoryKey;

public static class HostNodeHosting
{
    /// <summary>The host's actors: its HSM (found by the Coordinator through DistributedPubSub under
    /// <c>/user/hsm-{hostId}</c>), its reporter to the inventory, and, on SPM-capable hosts, a place
    /// for the SPM cluster singleton.</summary>
    /// <param name="management">The host's VM catalog, domain roots and guest ledgers; without it the host runs migration steps only.</param>
    /// <param name="spmLease">
    /// The pool's SPM lease (DESIGN §7a): the SPM singleton starts on this node only once it holds the lease, stops when
    /// the lease is lost, and fences every storage change by the lease's generation. Null only for in-process test
    /// clusters, whose SPM runs unfenced (and says so); a HostNode process refuses an SPM role without it.
    /// </param>
    public static AkkaConfigurationBuilder WithHostNodeActors(this AkkaConfigurationBuilder builder,
        HostNodeComponents host, bool spmCapable, HostManagement? management = null, SpmLeaseSettings? spmLease = null,
        int spmMaxCopies = SpmActor.DefaultMaxConcurrentCopies)
    {
        if (spmCapable) builder.WithSpmSingleton(host.Pool, spmLease, spmMaxCopies);
        builder.WithSingletonProxy<InventoryKey>("inventory", new ClusterSingletonOptions { Role = "coordinator" });
        return builder.WithActors((system, registry) =>
        {
            if (spmCapable && spmLease is null)
                system.Log.Warning("The SPM singleton on {0} runs UNFENCED: no SPM lease is configured, so two SPMs (a paused or " +
                                   "partitioned one and its successor) could both change storage", host.HostId);
            // the reporter calls no VM of the catalog stopped before the HSM adopted those still running
            var adopted = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            var hsm = system.ActorOf(HsmActor.Props(host.Hypervisor, host.Pool, management?.Catalog, adopted: adopted), HsmTopic.For(host.HostId));
            DistributedPubSub.Get(system).Mediator.Tell(new Put(hsm));
            registry.Register<HsmKey>(hsm);
            system.ActorOf(HostReporter.Props(host.HostId, spmCapable, host.Hypervisor, host.Pool, registry.Get<InventoryKey>(), management?.Catalog,
                adopted.Task), "host-reporter");
            if (management is not null)
            {
                var manager = system.ActorOf(VmManagerActor.Props(host.HostId, host.Hypervisor, host.Pool, management.Catalog, management.Roots,
                    management.GuestIo), ManagementTopics.VmManagerName(host.HostId));
                DistributedPubSub.Get(system).Mediator.Tell(new Put(manager));
            }
        });
    }

    /// <summary>The SPM cluster singleton over role <see cref="SpmRole"/>, guarded by the pool's lease when there is one.</summary>
    private static AkkaConfigurationBuilder WithSpmSingleton(this AkkaConfigurationBuilder builder, StoragePool pool, SpmLeaseSettings? lease,
        int maxCopies)
    {
        if (lease is null)
            return builder.WithSingleton<SpmKey>(SpmActor.SingletonName, SpmActor.Props(pool, maxConcurrentCopies: maxCopies),
                new ClusterSingletonOptions { Role = SpmRole }, createProxyToo: false);
        new FileLeaseOption(lease).Apply(builder);
        return builder.WithActors((system, registry) =>
        {
            // Made here rather than with WithSingleton for the one setting Akka.Hosting does not pass: the removal margin. A
            // member the resolver downed may still run its singletons for a while, so a singleton manager waits that margin
            // (the resolver's stable-after, 20 s) after the removal before it starts one elsewhere. The SPM needs no such
            // wait: it starts only under the pool's lease, which a downed SPM still running keeps renewing until the changes
            // it started have ended (PoolLease.ReleaseAsync; the new one waits for it), and which a dead or frozen one
            // renews no more. lsm local up --spm-hosts 2, by hand: host-1 SIGKILLed, the SPM ran on host-2 29 s later (24 s of
            // it the node's removal; the margin would have added its 20 s); frozen, 44 s instead of 50 s (there the lease's
            // own watch overlaps most of the margin). The
            // hand-over retries Akka derives from the margin fall to its minimum (8 at 250 ms): a hand-over that takes longer
            // restarts the manager, which the lease keeps safe (the lease is given up on leaving Oldest, before that).
            var settings = ClusterSingletonManagerSettings.Create(system)
                .WithRole(SpmRole)
                .WithSingletonName(SpmActor.SingletonName)
                .WithRemovalMargin(TimeSpan.FromMilliseconds(1)) // zero would mean the resolver's margin
                // a failed acquisition already watched the record for a period: try again soon after
                .WithLeaseSettings(new LeaseUsageSettings(SpmLeaseSettings.ConfigPath, lease.Period / 3));
            var manager = system.ActorOf(ClusterSingletonManager.Props(SpmActor.Leased(pool, lease.Path, maxCopies), PoisonPill.Instance, settings),
                SpmActor.SingletonName);
            registry.Register<SpmKey>(manager);
        });
    }

    public const string HostRole = "host";
    public const string SpmRole = "spm";
}
