using System.Collections.Concurrent;
using System.Security.Cryptography.X509Certificates;
using Akka.Actor;
using Akka.Cluster;
using Akka.Event;
using Akka.Hosting;
using Akka.Remote.Transport.DotNetty;
using LiveMigration.Shared.Hosting;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Xunit.Abstractions;

namespace LiveMigration.Cluster.Specs.InProcess;

/// <summary>
/// Mutual TLS on the cluster's remoting (issue 13): members with certificates from the cluster CA form a cluster and
/// talk; a rogue node — plain, or with a certificate from another CA — cannot join, cannot get a message to any actor,
/// and the members log why they refused it. Real ActorSystems on loopback, wired by <see cref="ClusterNodeHosting.WithClusterNode"/>
/// as the Coordinator and HostNode processes are.
/// </summary>
public sealed class RemotingTlsSpecs(ITestOutputHelper output) : IAsyncLifetime
{
    private const string Hocon = ClusterNodeHosting.FastTestTimings + "\nakka.loglevel = INFO\n";
    private static readonly TimeSpan Validity = TimeSpan.FromDays(1);

    private readonly X509Certificate2 _clusterCa = ClusterCertificates.CreateAuthority("lsm test cluster CA", Validity);
    private readonly X509Certificate2 _otherCa = ClusterCertificates.CreateAuthority("lsm test cluster CA", Validity);
    private readonly List<IHost> _hosts = [];
    private readonly string _folder = Directory.CreateTempSubdirectory("lsm-tls-spec-").FullName;
    private readonly ConcurrentQueue<LogEvent> _memberLog = new();

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync()
    {
        // one by one: stopping members together waits on cluster-exiting (PACKAGES.md)
        foreach (var host in Enumerable.Reverse(_hosts))
        {
            await host.StopAsync();
            host.Dispose();
        }
        Directory.Delete(_folder, recursive: true);
    }

    [Fact]
    public async Task Two_members_with_certificates_from_the_cluster_CA_form_a_cluster_and_exchange_messages()
    {
        var first = await StartMemberAsync("coordinator", seed: null);
        var second = await StartMemberAsync("host-1", seed: SelfAddress(first));

        await Eventually.HoldsAsync("both members Up on both", () => Task.FromResult(
            UpMembers(first).SetEquals([SelfAddress(first), SelfAddress(second)]) &&
            UpMembers(second).SetEquals([SelfAddress(first), SelfAddress(second)])), TimeSpan.FromSeconds(30));

        var echo = await second.ActorSelection(new RootActorPath(SelfAddress(first)) / "user" / "echo")
            .Ask<ActorIdentity>(new Identify("echo"), TimeSpan.FromSeconds(10));
        Assert.NotNull(echo.Subject);
        Assert.Equal("pong from coordinator", await echo.Subject.Ask<string>("ping", TimeSpan.FromSeconds(10)));
        Assert.DoesNotContain(_memberLog, e => e.ToString().Contains("Cluster TLS: refused"));
    }

    [Fact]
    public async Task A_member_runs_the_cluster_and_remoting_actors_on_threads_of_their_own_with_the_failover_timings()
    {
        var member = await StartMemberAsync("coordinator", seed: null);
        var config = member.Settings.Config;
        Assert.Equal("lsm-membership-dispatcher", Akka.Cluster.Cluster.Get(member).Settings.UseDispatcher);
        Assert.Equal("lsm-membership-dispatcher", config.GetString("akka.remote.use-dispatcher"));
        Assert.Equal("ForkJoinDispatcher", config.GetString("lsm-membership-dispatcher.type"));
        // the heartbeats go out from an actor on it (Akka.NET puts only the heartbeat sender and the join processes on the
        // cluster's use-dispatcher; the receiver stays on the default dispatcher)
        IActorRef? sender = null;
        await Eventually.HoldsAsync("the heartbeat sender is started", async () =>
        {
            try
            {
                sender = await member.ActorSelection("/system/cluster/core/daemon/heartbeatSender").ResolveOne(TimeSpan.FromSeconds(1));
                return true;
            }
            catch (ActorNotFoundException)
            {
                return false;
            }
        }, TimeSpan.FromSeconds(20));
        var cell = Assert.IsType<ActorCell>(Assert.IsAssignableFrom<ActorRefWithCell>(sender).Underlying);
        Assert.Equal("lsm-membership-dispatcher", cell.Dispatcher.Id);
        // the failover timings hold where the test's faster ones say nothing
        Assert.Equal(8, config.GetInt("akka.cluster.singleton.min-number-of-hand-over-retries"));
    }

    [Fact]
    public async Task A_plain_node_cannot_join_nor_reach_any_actor_and_the_member_logs_the_refusal()
    {
        var member = await StartMemberAsync("coordinator", seed: null);
        // The member's port as a plain node would address it: no TLS, so no akka.ssl.tcp transport to speak it.
        var memberAddress = SelfAddress(member);
        var rogue = await StartRogueAsync(new Address("akka.tcp", memberAddress.System, memberAddress.Host, memberAddress.Port), certificate: null);

        await AssertRefusedAsync(member, rogue);
    }

    [Fact]
    public async Task A_node_with_a_certificate_from_another_CA_cannot_join_nor_reach_any_actor_and_the_member_logs_the_refusal()
    {
        var member = await StartMemberAsync("coordinator", seed: null);
        var rogue = await StartRogueAsync(SelfAddress(member),
            ClusterCertificates.IssueNode(_otherCa, "host-9", ["127.0.0.1"], Validity));

        await AssertRefusedAsync(member, rogue);
        // The member names the peer and the reason, not only "handshake failed".
        Assert.Contains(_memberLog, e => e.ToString().Contains("Cluster TLS: refused") && e.ToString().Contains("CN=host-9")
                                         && e.ToString().Contains("does not chain to the cluster CA"));
    }

    /// <summary>
    /// The member logged a refusal of the rogue; then, while the rogue keeps asking to join (every second), neither an
    /// Identify of a user actor nor one of a system actor is answered, and the rogue is in no member's view.
    /// </summary>
    private async Task AssertRefusedAsync(ActorSystem member, ActorSystem rogue)
    {
        var memberAsRogueSees = Akka.Cluster.Cluster.Get(rogue).Settings.SeedNodes.Single();
        await Eventually.HoldsAsync("the member logs the refused connection", () => Task.FromResult(_memberLog.Any(IsRefusal)),
            TimeSpan.FromSeconds(30), () => string.Join("\n", _memberLog.Select(e => e.ToString())));
        foreach (var e in _memberLog.Where(IsRefusal)) output.WriteLine($"refusal logged: {e}");

        foreach (var path in new[] { "/user/echo", "/system/cluster/core/daemon" })
        {
            // No answer from the member: either none at all, or the rogue's own dead letters saying nobody is there.
            var identity = await IdentifyAsync(rogue.ActorSelection($"{memberAsRogueSees}{path}"), TimeSpan.FromSeconds(4));
            Assert.Null(identity?.Subject);
        }
        Assert.DoesNotContain(Akka.Cluster.Cluster.Get(member).State.Members, m => m.Address.Equals(SelfAddress(rogue)));
        Assert.Empty(Akka.Cluster.Cluster.Get(rogue).State.Members);
        // A positive control: the same paths answer a local asker, so the silence above is the refusal's.
        Assert.NotNull((await member.ActorSelection("/user/echo").Ask<ActorIdentity>(new Identify(1), TimeSpan.FromSeconds(5))).Subject);
    }

    /// <summary>
    /// What the member logs when it turns a peer away: our validator's line (a certificate it refuses, with the peer and
    /// why), or the transport's (a peer that does not speak TLS at all never gets as far as a certificate).
    /// </summary>
    private static bool IsRefusal(LogEvent e) =>
        e.LogLevel() >= Akka.Event.LogLevel.WarningLevel
        && (e.ToString().Contains("Cluster TLS: refused") || e.ToString().Contains("due to TLS handshake failure"));

    private static async Task<ActorIdentity?> IdentifyAsync(ActorSelection selection, TimeSpan timeout)
    {
        try
        {
            return await selection.Ask<ActorIdentity>(new Identify(selection.PathString), timeout);
        }
        catch (AskTimeoutException)
        {
            return null;
        }
    }

    private async Task<ActorSystem> StartMemberAsync(string name, Address? seed)
    {
        // through PEM files, as the processes read them
        var (certificate, key, ca) = (Path.Combine(_folder, $"{name}.crt"), Path.Combine(_folder, $"{name}.key"), Path.Combine(_folder, "ca.crt"));
        using (var issued = ClusterCertificates.IssueNode(_clusterCa, name, ["127.0.0.1"], Validity))
        {
            ClusterCertificates.WriteCertificate(issued, certificate);
            ClusterCertificates.WriteKey(issued, key);
        }
        ClusterCertificates.WriteCertificate(_clusterCa, ca);
        var tls = ClusterTls.Load(certificate, key, ca);
        var system = await StartAsync(seed, akka => akka.WithClusterNode(Settings(seed) with { Tls = tls }));
        system.ActorOf(Props.Create(() => new Echo(name)), "echo");
        var collector = system.ActorOf(Props.Create(() => new LogCollector(_memberLog)), "log-collector");
        system.EventStream.Subscribe(collector, typeof(LogEvent));
        return system;
    }

    /// <summary>
    /// A node that wants in: plain remoting, or TLS with <paramref name="certificate"/> accepting whatever the member
    /// presents (a rogue has no reason to be picky, and so the member's own check is what stops it).
    /// </summary>
    private Task<ActorSystem> StartRogueAsync(Address seed, X509Certificate2? certificate) =>
        StartAsync(seed, akka =>
        {
            akka.WithClusterNode(Settings(seed));
            if (certificate is not null)
                akka.AddHocon("akka.remote.dot-netty.tcp.enable-ssl = on", HoconAddMode.Prepend)
                    .AddSetup(new DotNettySslSetup(certificate, suppressValidation: true, requireMutualAuthentication: true,
                        customValidator: (_, _, _, _, _) => true));
        });

    private static ClusterNodeSettings Settings(Address? seed) => new()
    {
        Hostname = "127.0.0.1",
        Port = 0,
        Seeds = seed is null ? [] : [seed.ToString()],
        Roles = ["coordinator"],
        ExtraHocon = Hocon,
    };

    private async Task<ActorSystem> StartAsync(Address? seed, Action<AkkaConfigurationBuilder> configure)
    {
        var host = new HostBuilder()
            .ConfigureServices(s => s.AddAkka(ClusterNodeSettings.SystemName, akka =>
            {
                configure(akka);
                if (seed is null) akka.AddStartup((system, _) => Akka.Cluster.Cluster.Get(system).Join(Akka.Cluster.Cluster.Get(system).SelfAddress));
            }))
            .Build();
        _hosts.Add(host);
        await host.StartAsync();
        var system = host.Services.GetRequiredService<ActorSystem>();
        output.WriteLine($"started {SelfAddress(system)}");
        return system;
    }

    private static Address SelfAddress(ActorSystem system) => Akka.Cluster.Cluster.Get(system).SelfAddress;

    private static HashSet<Address> UpMembers(ActorSystem system) =>
        Akka.Cluster.Cluster.Get(system).State.Members.Where(m => m.Status == MemberStatus.Up).Select(m => m.Address).ToHashSet();

    private sealed class Echo : ReceiveActor
    {
        public Echo(string name) => Receive<string>(_ => Sender.Tell($"pong from {name}"));
    }

    private sealed class LogCollector : ReceiveActor
    {
        public LogCollector(ConcurrentQueue<LogEvent> log) => Receive<LogEvent>(log.Enqueue);
    }
}
