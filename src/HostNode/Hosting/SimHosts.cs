using Akka.Hosting;
using LiveMigration.HostNode.Hypervisor.Sim;
using LiveMigration.HostNode.Management;
using LiveMigration.HostNode.Storage;
using LiveMigration.HostNode.Storage.Sim;
using LiveMigration.Shared.Hosting;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;

namespace LiveMigration.HostNode.Hosting;

/// <summary>
/// <c>--hypervisor sim</c>: hosts whose VMs and domains are the in-memory sim adapters, for trying scale on one machine
/// through the same API and CLI. One process runs <c>--sim-hosts N</c> of them (host-1 … host-N), each a cluster member
/// of its own (its own ActorSystem; host-1 on <c>--port</c>, the others on free ports; its own data directory and roles: host-1 … host-K SPM-capable,
/// K = <c>--sim-spm-hosts</c>), so the Coordinator sees N hosts as it would see N machines. They share one set of
/// in-memory domains, as hosts share the storage they all mount. Copies and mirrors take no time unless
/// <c>--sim-copy-rate</c> (bytes/s) paces them. Nothing they hold survives the process.
/// </summary>
public static class SimHosts
{
    public const int MaxHosts = 64;
    public static readonly TimeSpan PacedJobTick = TimeSpan.FromMilliseconds(100);

    public static async Task<int> RunAsync(IConfiguration config, HostNodeSettings first)
    {
        var count = PositiveInt(config["HostNode:SimHosts"] ?? "2", "--sim-hosts", MaxHosts);
        var spmHosts = PositiveInt(config["HostNode:SimSpmHosts"] ?? "1", "--sim-spm-hosts", count);
        var copyRate = long.TryParse(config["HostNode:SimCopyRate"] ?? "0", out var rate) && rate >= 0 ? rate
            : throw new ArgumentException($"--sim-copy-rate must be 0 (instant) or a rate in bytes per second, got '{config["HostNode:SimCopyRate"]}'");
        if (spmHosts > 0 && first.SpmLease is null)
            throw new ArgumentException("the sim's SPM-capable hosts need the pool's SPM lease: --spm-lease PATH");

        var paced = copyRate > 0;
        var storage = new SimStorageOptions { CopyBytesPerSecond = paced ? copyRate : 1L << 30, TimeScale = paced ? 1 : 0 };
        // A paced mirror moves its modelled offset every 100 ms rather than the default 5 ms (which suits tests' short mirrors):
        // a host reports progress once a second anyway, and 500 mirrors a host ticking 200 times a second took the CPU the
        // Coordinator needed on a shared machine (bench control-plane's recovery: RunMirrorAsync the hosts' hottest frame).
        var jobs = new SimHypervisorOptions
        {
            MirrorBytesPerSecond = paced ? copyRate : 1L << 30,
            TimeScale = paced ? 1 : 0,
            JobTick = paced ? PacedJobTick : new SimHypervisorOptions().JobTick,
        };
        var domains = new SimDomainFactory(storage);
        var dataRoot = Path.GetDirectoryName(first.DataDirectory) ?? first.DataDirectory;

        var hosts = new List<(IHost Host, SimHost Vms)>();
        for (var i = 1; i <= count; i++)
        {
            var hostId = $"host-{i}";
            var settings = HostNodeSettings.From(new ConfigurationBuilder().AddConfiguration(config).AddInMemoryCollection(new Dictionary<string, string?>
            {
                ["HostNode:HostId"] = hostId,
                ["HostNode:DataDirectory"] = Path.Combine(dataRoot, hostId),
                // host-1 where the seed lists say, the others anywhere: they join through the seeds
                ["Cluster:Port"] = i == 1 ? first.Cluster.Port.ToString() : "0",
                ["Cluster:Roles"] = i <= spmHosts ? $"{HostNodeHosting.HostRole},{HostNodeHosting.SpmRole}" : HostNodeHosting.HostRole,
                ["HostNode:SpmLease:Path"] = i <= spmHosts ? first.SpmLease?.Path : null,
            }).Build());
            var pool = new StoragePool { AllowedRoots = settings.StorageRoots, DomainFactory = domains };
            foreach (var root in settings.DomainRoots) await DomainRoots.AttachAllUnderAsync(root, pool);
            var vms = new SimHost(hostId);
            var components = new HostNodeComponents(hostId, pool, new SimHypervisor(vms, pool, jobs));
            var management = HostManagement.Under(settings.DataDirectory);

            var builder = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings { Args = [ConfigWatch.Off] });
            builder.Services.AddAkka(ClusterNodeSettings.SystemName, akka => akka
                .WithClusterNode(settings.Cluster)
                .WithHostNodeActors(components, settings.SpmCapable, management, settings.SpmLease, settings.SpmMaxCopies));
            hosts.Add((builder.Build(), vms));
            Console.WriteLine($"HostNode {hostId} (sim): roles {string.Join(",", settings.Cluster.Roles)}, " +
                              $"copies {(paced ? $"paced at {copyRate} bytes/s" : "instant")}");
        }
        // Each host stops on SIGTERM by its own lifetime; the process ends when all have.
        await Task.WhenAll(hosts.Select(h => h.Host.RunAsync()));
        foreach (var (_, vms) in hosts) await vms.DisposeAsync();
        return 0;
    }

    private static int PositiveInt(string text, string name, int max) =>
        int.TryParse(text, out var n) && n >= 1 && n <= max ? n : throw new ArgumentException($"{name} must be 1 to {max}, got '{text}'");
}
