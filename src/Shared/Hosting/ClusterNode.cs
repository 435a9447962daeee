using Akka.Cluster.Hosting;
using Akka.Cluster.Hosting.SBR;
using Akka.Hosting;
using Akka.Remote.Hosting;
using LiveMigration.Shared.Serialization;
using Microsoft.Extensions.Configuration;

namespace LiveMigration.Shared.Hosting;

/// <summary>How one process joins the cluster: where it listens, whom it asks to join, which roles it plays.</summary>
public sealed record ClusterNodeSettings
{
    /// <summary>The actor system's name: every node of one pool uses the same.</summary>
    public const string SystemName = "lsm";

    public string Hostname { get; init; } = "127.0.0.1";
    /// <summary>0 lets the OS pick a free port (tests); a fixed port for seed nodes.</summary>
    public int Port { get; init; }
    /// <summary>Seed node addresses like <c>akka.tcp://lsm@127.0.0.1:4053</c>; empty makes this node join itself (the first node).</summary>
    public IReadOnlyList<string> Seeds { get; init; } = [];
    public IReadOnlyList<string> Roles { get; init; } = [];
    /// <summary>Extra HOCON laid over the defaults (tests use it for fast cluster timings).</summary>
    public string? ExtraHocon { get; init; }

    /// <summary>The command-line switches of the cluster part, shared by both executables.</summary>
    public static readonly IReadOnlyDictionary<string, string> Switches = new Dictionary<string, string>
    {
        ["--port"] = "Cluster:Port",
        ["--hostname"] = "Cluster:Hostname",
        ["--seed"] = "Cluster:Seeds",
        ["--roles"] = "Cluster:Roles",
    };

    /// <summary>Reads the <c>Cluster:*</c> keys; <paramref name="requiredRole"/> is added to the roles when missing.</summary>
    public static ClusterNodeSettings FromConfiguration(IConfiguration config, string requiredRole)
    {
        var port = config["Cluster:Port"] is { } p
            ? int.TryParse(p, out var n) && n is >= 0 and <= 65535 ? n : throw new ArgumentException($"port '{p}' is not a port number (0-65535)")
            : 0;
        var roles = ParseRoles(config["Cluster:Roles"] ?? requiredRole);
        if (!roles.Contains(requiredRole)) roles = [requiredRole, .. roles];
        return new ClusterNodeSettings
        {
            Hostname = config["Cluster:Hostname"] ?? "127.0.0.1",
            Port = port,
            Seeds = ParseSeeds(config["Cluster:Seeds"]),
            Roles = roles,
            ExtraHocon = config["Cluster:ExtraHocon"],
        };
    }

    /// <summary>Parses a comma-separated seed list, refusing anything that is not an akka.tcp address of this system.</summary>
    public static IReadOnlyList<string> ParseSeeds(string? text)
    {
        var seeds = (text ?? "").Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        foreach (var seed in seeds)
        {
            if (!seed.StartsWith($"akka.tcp://{SystemName}@", StringComparison.Ordinal) || !Uri.TryCreate(seed, UriKind.Absolute, out var uri) || uri.Port <= 0)
                throw new ArgumentException($"seed '{seed}' is not an address like akka.tcp://{SystemName}@127.0.0.1:4053");
        }
        return seeds;
    }

    public static IReadOnlyList<string> ParseRoles(string? text) =>
        (text ?? "").Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
            .Select(r => r.All(c => char.IsAsciiLetterLower(c) || c == '-') && r.Length is > 0 and <= 32
                ? r
                : throw new ArgumentException($"role '{r}' must be lower-case letters and dashes (e.g. host,spm)"))
            .Distinct().ToList();
}

public static class ClusterNodeHosting
{
    /// <summary>
    /// Remoting, clustering with the keep-majority split brain resolver, DistributedPubSub and the
    /// protocol serializer: what every process of the pool needs before its own actors.
    /// </summary>
    public static AkkaConfigurationBuilder WithClusterNode(this AkkaConfigurationBuilder builder, ClusterNodeSettings settings)
    {
        if (settings.ExtraHocon is { Length: > 0 } hocon)
            builder.AddHocon(hocon, HoconAddMode.Prepend);
        return builder
            .WithRemoting(settings.Hostname, settings.Port)
            .WithClustering(new ClusterOptions
            {
                SeedNodes = settings.Seeds.Count > 0 ? settings.Seeds.ToArray() : null,
                Roles = settings.Roles.ToArray(),
                SplitBrainResolver = new KeepMajorityOption(),
            })
            .WithDistributedPubSub("")
            .WithProtocolSerializer();
    }

    /// <summary>Cluster timings for tests: a few seconds to form and to hand over instead of tens (PACKAGES.md).</summary>
    public const string FastTestTimings = """
        akka.cluster {
          gossip-interval = 200ms
          leader-actions-interval = 200ms
          periodic-tasks-initial-delay = 100ms
          unreachable-nodes-reaper-interval = 250ms
          seed-node-timeout = 1s
          retry-unsuccessful-join-after = 1s
        }
        akka.cluster.sharding {
          retry-interval = 200ms
          shard-start-timeout = 2s
          waiting-for-state-timeout = 1s
          updating-state-timeout = 1s
          handoff-timeout = 5s
          rebalance-interval = 1s
        }
        # All nodes of a test cluster share two cores: under load heartbeats come late and reachability flaps for a
        # while. The resolver's default answer to a long flap is to down every member (the Coordinator included),
        # which turns a busy machine into a dead cluster; here it waits for a stable view instead.
        akka.cluster.split-brain-resolver.down-all-when-unstable = off
        akka.cluster.singleton.hand-over-retry-interval = 200ms
        akka.cluster.singleton-proxy.singleton-identification-interval = 200ms
        akka.coordinated-shutdown.phases.cluster-exiting.timeout = 1s
        # The SPM lease (DESIGN §7a) of hosts that have one: a takeover after 4 s + 1 s unrenewed instead of 30 s + 5 s.
        # Still above a GC pause; a live holder is never taken over anyway (only the oldest SPM node acquires).
        lsm.spm-lease {
          heartbeat-timeout = 4s
          heartbeat-interval = 1333ms
          margin = 1s
          lease-operation-timeout = 20s
        }
        """;
}
