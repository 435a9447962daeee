using System.Net.Http.Json;
using System.Text.Json;
using LiveMigration.Cli.Local;
using LiveMigration.HostNode.Hypervisor.Qmp;
using LiveMigration.Shared.Hosting;

namespace LiveMigration.Cli.Tests;

/// <summary>
/// An empty cluster for the management commands: a Coordinator and host-1 (SPM) as processes, no domain and no
/// VM (the tests make them with lsm). On dispose the nodes are stopped by pid and the VMs host-1 started are stopped.
/// </summary>
public sealed class VmClusterFixture : IAsyncLifetime
{
    private readonly HttpClient _http = new() { Timeout = TimeSpan.FromSeconds(5) };

    public VmClusterFixture()
    {
        // Short, under /tmp: QEMU's unix sockets live below it.
        DataDirectory = Path.Combine("/tmp", $"lsm-{Guid.NewGuid().ToString("N")[..8]}");
        Directory.CreateDirectory(DataDirectory);
        Cluster = new LocalCluster(DataDirectory) { ExtraHocon = ClusterNodeHosting.FastTestTimings, StorageRoots = [SharedStorage] };
        Directory.CreateDirectory(Cluster.DomainRoot);
    }

    public string DataDirectory { get; }
    public LocalCluster Cluster { get; }
    public string Api => Cluster.ApiUrl;
    /// <summary>Where the tests create domains at runtime (in it, or in folders below it): not a configured root of the host, but an allowed one.</summary>
    public string SharedStorage => Path.Combine(DataDirectory, "shared");

    public async Task InitializeAsync()
    {
        Cluster.StartCoordinator();
        Cluster.StartHost("host-1", spm: true);
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(45);
        while (true)
        {
            try
            {
                var hosts = await _http.GetFromJsonAsync<JsonElement>($"{Api}/api/hosts");
                // the SPM answers: storage changes can be made
                if (hosts.GetProperty("hosts").EnumerateArray().Any(h => h.GetProperty("spm").GetBoolean())) return;
            }
            catch (Exception e) when (e is HttpRequestException or TaskCanceledException or JsonException or KeyNotFoundException) { }
            if (DateTime.UtcNow > deadline) throw new TimeoutException($"waited 45 s for host-1 to report and the SPM to answer\n{LogTails()}");
            await Task.Delay(200);
        }
    }

    public string LogTails() => LocalClusterLauncher.LogTails(Cluster.LogDirectory, lines: 30);

    public async Task DisposeAsync()
    {
        _http.Dispose();
        await Cluster.DisposeAsync();
        await using (var stopper = new QmpHypervisor(new QmpHypervisorOptions { RunDirectory = Cluster.HostRunDirectory("host-1") }))
            foreach (var running in await stopper.AdoptRunningVmsAsync())
                await stopper.StopVmAsync(running.Id);
        Directory.Delete(DataDirectory, recursive: true);
    }
}
