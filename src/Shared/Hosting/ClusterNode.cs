using Akka.Cluster.Hosting;
using Akka.Cluster.Hosting.SBR;
using Akka.Hosting;
using Akka.Remote.Hosting;
using Akka.Event;
using Akka.Remote.Transport.DotNetty;
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
    /// <summary>Seed node addresses like <c>akka.tcp://lsm@127.0.0.1:4053</c> (<c>akka.ssl.tcp://</c> with TLS); empty makes this node join itself (the first node).</summary>
    public IReadOnlyList<string> Seeds { get; init; } = [];
    public IReadOnlyList<string> Roles { get; init; } = [];
    /// <summary>Extra HOCON laid over the defaults (tests use it for fast cluster timings).</summary>
    public string? ExtraHocon { get; init; }

    /// <summary>
    /// Mutual TLS between members (<c>--tls-certificate</c>, <c>--tls-ca</c>); null: plain remoting, which anyone who
    /// reaches the port can use to command this node, so it is allowed on loopback only unless <see cref="InsecureRemoting"/>.
    /// </summary>
    public ClusterTls? Tls { get; init; }

    /// <summary><c>--insecure-remoting</c>: the operator accepts plain remoting on an address beyond loopback.</summary>
    public bool InsecureRemoting { get; init; }

    /// <summary>
    /// <c>--replaces ADDRESS</c>: the address of a crashed incarnation of this node, which this one downs once it is a
    /// member (<see cref="PredecessorDowning"/>). Only for a process whose predecessor is verifiably gone.
    /// </summary>
    public string? Replaces { get; init; }

    /// <summary>The command-line switches of the cluster part, shared by both executables.</summary>
    public static readonly IReadOnlyDictionary<string, string> Switches = new Dictionary<string, string>
    {
        ["--port"] = "Cluster:Port",
        ["--hostname"] = "Cluster:Hostname",
        ["--seed"] = "Cluster:Seeds",
        ["--roles"] = "Cluster:Roles",
        ["--tls-certificate"] = "Cluster:Tls:Certificate",
        ["--tls-key"] = "Cluster:Tls:Key",
        ["--tls-ca"] = "Cluster:Tls:Ca",
        ["--insecure-remoting"] = "Cluster:InsecureRemoting",
        ["--replaces"] = "Cluster:Replaces",
    };

    /// <summary>Switches that take no value; the configuration reads them as <c>true</c>.</summary>
    private static readonly string[] Flags = ["--insecure-remoting"];

    /// <summary>
    /// The command line with each bare flag (<c>--insecure-remoting</c>) written as <c>--insecure-remoting=true</c>: the
    /// configuration's command-line reader would otherwise take the next switch as its value.
    /// </summary>
    public static string[] ExpandFlags(IEnumerable<string> args) =>
        args.Select(a => Flags.Contains(a, StringComparer.Ordinal) ? $"{a}=true" : a).ToArray();

    /// <summary>Reads the <c>Cluster:*</c> keys; <paramref name="requiredRole"/> is added to the roles when missing.</summary>
    public static ClusterNodeSettings FromConfiguration(IConfiguration config, string requiredRole)
    {
        var port = config["Cluster:Port"] is { } p
            ? int.TryParse(p, out var n) && n is >= 0 and <= 65535 ? n : throw new ArgumentException($"port '{p}' is not a port number (0-65535)")
            : 0;
        var roles = ParseRoles(config["Cluster:Roles"] ?? requiredRole);
        if (!roles.Contains(requiredRole)) roles = [requiredRole, .. roles];
        var hostname = config["Cluster:Hostname"] ?? "127.0.0.1";
        var insecure = config["Cluster:InsecureRemoting"] is { } flag
            ? bool.TryParse(flag, out var yes) ? yes : throw new ArgumentException($"--insecure-remoting takes no value ('{flag}')")
            : false;
        var tls = ReadTls(config);
        if (tls is null && !insecure && !IsLoopback(hostname))
            throw new ArgumentException($"cluster remoting on {hostname} without TLS is refused: anyone who reaches that address could command this node. " +
                                        "Give --tls-certificate FILE and --tls-ca FILE (deploy/README.md says how to issue them), " +
                                        "or --insecure-remoting to run plain on a network you trust");
        var replaces = config["Cluster:Replaces"] is { Length: > 0 } r ? ParseSeeds(r, tls is not null) : [];
        if (replaces.Count > 1)
            throw new ArgumentException($"--replaces takes the one address of the crashed incarnation this node replaces, got '{config["Cluster:Replaces"]}'");
        if (replaces.Count == 1 && Uri.TryCreate(replaces[0], UriKind.Absolute, out var replaced) && replaced.Host == hostname && replaced.Port == port)
            throw new ArgumentException($"--replaces {replaces[0]} is this node's own address: a node that comes back on its old address needs no --replaces");
        return new ClusterNodeSettings
        {
            Replaces = replaces.Count == 1 ? replaces[0] : null,
            Hostname = hostname,
            Port = port,
            Seeds = ParseSeeds(config["Cluster:Seeds"], tls is not null),
            Roles = roles,
            ExtraHocon = config["Cluster:ExtraHocon"],
            Tls = tls,
            InsecureRemoting = insecure,
        };
    }

    /// <summary>The node's certificate and the CA bundle, both or neither.</summary>
    private static ClusterTls? ReadTls(IConfiguration config)
    {
        var (certificate, key, ca) = (config["Cluster:Tls:Certificate"], config["Cluster:Tls:Key"], config["Cluster:Tls:Ca"]);
        if (certificate is null && key is null && ca is null) return null;
        if (certificate is null || ca is null)
            throw new ArgumentException("mutual TLS needs both --tls-certificate FILE (the node's certificate and key) and --tls-ca FILE (the cluster's CA bundle)");
        return ClusterTls.Load(certificate, key, ca);
    }

    /// <summary>Whether only this machine can reach <paramref name="hostname"/>.</summary>
    public static bool IsLoopback(string hostname) =>
        hostname.Equals("localhost", StringComparison.OrdinalIgnoreCase)
        || System.Net.IPAddress.TryParse(hostname, out var ip) && System.Net.IPAddress.IsLoopback(ip);

    /// <summary>The remoting protocol of a member's address: TLS changes it, so plain and TLS nodes never take one another for peers.</summary>
    public static string Protocol(bool tls) => tls ? "akka.ssl.tcp" : "akka.tcp";

    /// <summary>A member's address, as seeds and <c>lsm cluster</c> name it.</summary>
    public static string AddressOf(string hostname, int port, bool tls) => $"{Protocol(tls)}://{SystemName}@{hostname}:{port}";

    /// <summary>
    /// Parses a comma-separated seed list, refusing anything that is not an address of this system with the protocol
    /// this node speaks (<c>akka.ssl.tcp</c> with TLS, <c>akka.tcp</c> without): a seed of the other kind is never reached.
    /// </summary>
    public static IReadOnlyList<string> ParseSeeds(string? text, bool tls = false)
    {
        var seeds = (text ?? "").Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        var example = AddressOf("127.0.0.1", 4053, tls);
        foreach (var seed in seeds)
        {
            var tlsSeed = seed.StartsWith($"{Protocol(true)}://{SystemName}@", StringComparison.Ordinal);
            if (!(tlsSeed || seed.StartsWith($"{Protocol(false)}://{SystemName}@", StringComparison.Ordinal))
                || !Uri.TryCreate(seed, UriKind.Absolute, out var uri) || uri.Port <= 0 || uri.AbsolutePath is not ("" or "/"))
                throw new ArgumentException($"seed '{seed}' is not an address like {example}");
            if (tlsSeed != tls)
                throw new ArgumentException(tls
                    ? $"seed '{seed}' is a plain address, but this node runs mutual TLS (--tls-certificate): its seeds are {Protocol(true)}:// addresses, like {example}"
                    : $"seed '{seed}' is not a plain address like {example}" +
                      (tlsSeed ? "; a TLS seed needs --tls-certificate and --tls-ca on this node too" : ""));
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
            .AddHocon(FailoverTimings, HoconAddMode.Append)
            .AddHocon(MembershipThreads, HoconAddMode.Append)
            .WithRemoting(settings.Hostname, settings.Port)
            .WithRemotingSecurity(settings)
            .WithClustering(new ClusterOptions
            {
                // a node that replaces a crashed incarnation joins once that one is removed (PredecessorDowning joins it)
                SeedNodes = settings.Seeds.Count > 0 && settings.Replaces is null ? settings.Seeds.ToArray() : null,
                Roles = settings.Roles.ToArray(),
                SplitBrainResolver = new KeepMajorityOption(),
            })
            .WithDistributedPubSub("")
            .WithProtocolSerializer()
            .WithPredecessorDowning(settings);
    }

    private static AkkaConfigurationBuilder WithPredecessorDowning(this AkkaConfigurationBuilder builder, ClusterNodeSettings settings)
    {
        builder.WithActors((system, _) => system.ActorOf(PredecessorWatch.Props(), PredecessorWatch.Name));
        return settings.Replaces is not { } replaces
            ? builder
            : builder.WithActors((system, _) => system.ActorOf(
                PredecessorDowning.Props(Akka.Actor.Address.Parse(replaces), settings.Seeds.Select(Akka.Actor.Address.Parse).ToList()), "predecessor-downing"));
    }

    /// <summary>
    /// Mutual TLS on the dot-netty transport when the node has a certificate: it presents it, demands one from every
    /// peer (both when it connects and when it is connected to), and accepts only peers whose certificate chains to the
    /// cluster CA (<see cref="ClusterTls.AcceptPeer"/>, which logs each refusal with the peer and the reason). Without a
    /// certificate the node runs plain, as in-process test clusters do, and says so at WARNING.
    /// </summary>
    private static AkkaConfigurationBuilder WithRemotingSecurity(this AkkaConfigurationBuilder builder, ClusterNodeSettings settings)
    {
        if (settings.Tls is not { } tls)
            return builder.AddStartup((system, _) => system.Log.Warning(
                "Cluster remoting on {0}:{1} is unauthenticated (no --tls-certificate/--tls-ca): anyone who reaches that port can join and command this node",
                settings.Hostname, settings.Port));
        return builder
            .AddHocon("akka.remote.dot-netty.tcp.enable-ssl = on", HoconAddMode.Prepend)
            .AddSetup(new DotNettySslSetup(tls.Certificate, suppressValidation: false, requireMutualAuthentication: true,
                customValidator: tls.AcceptPeer));
    }

    /// <summary>
    /// Remoting's endpoint actors and the cluster's heartbeat sender and join processes (what Akka.NET puts on the cluster's
    /// use-dispatcher) run on two threads of their own instead of the .NET thread pool they share with everything else by
    /// default. On a node whose pool was saturated (sim hosts making thousands of VMs, a Coordinator starting thousands of
    /// migrations on two cores) heartbeats went out and were answered seconds late; reachability flapped until the
    /// resolver, seeing an unstable cluster, downed every member with the Coordinator (bench control-plane, 10,000 in
    /// flight). Akka.NET keeps the heartbeat receiver on the default dispatcher, so a node whose actors are swamped can
    /// still answer late: this narrows the window, it does not close it.
    /// </summary>
    public const string MembershipThreads = """
        lsm-membership-dispatcher {
          type = ForkJoinDispatcher
          throughput = 100
          dedicated-thread-pool {
            thread-count = 2
            threadtype = background
          }
        }
        akka.cluster.use-dispatcher = lsm-membership-dispatcher
        akka.remote.use-dispatcher = lsm-membership-dispatcher
        """;

    /// <summary>
    /// How fast the cluster moves on once a member is known dead (a crashed Coordinator restarted with <c>--replaces</c>
    /// downs its old incarnation at once): Akka's defaults (gossip and leader actions every second, a singleton's hand-over
    /// asked for 15 times a second apart, proxies and shard regions looking for their singleton every 1–2 s) added 5–25 s
    /// before the singletons and the sagas ran again. Seen in bench control-plane's recovery: the removal of the downed
    /// incarnation took 4.5 s, and a singleton manager that saw the new oldest before the removal asked the dead node to
    /// hand over for 20 s. How fast a failure is detected is left alone (heartbeats, acceptable pause): that is what
    /// decides a live member's fate under load. Test timings and extra HOCON (LSM_Cluster__ExtraHocon) come before these.
    /// </summary>
    public const string FailoverTimings = """
        akka.cluster {
          gossip-interval = 250ms
          leader-actions-interval = 250ms
          unreachable-nodes-reaper-interval = 500ms
        }
        akka.cluster.singleton {
          hand-over-retry-interval = 250ms
          min-number-of-hand-over-retries = 8
        }
        akka.cluster.singleton-proxy.singleton-identification-interval = 250ms
        akka.cluster.sharding.retry-interval = 250ms
        """;

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
          # Not below Akka's defaults (2 s, 5 s): a shard loads its remembered entities from the journal, and the shard
          # coordinator writes its state to a majority; with PostgreSQL on a loaded 2-core machine either took over 1 s,
          # and a shard that gives up loading stops and drops the message it was started for (a StartMigration: 503).
          waiting-for-state-timeout = 5s
          updating-state-timeout = 5s
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
