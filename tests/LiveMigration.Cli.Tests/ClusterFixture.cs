using System.Net.Http.Json;
using System.Text.Json;
using LiveMigration.Cli.Local;
using LiveMigration.HostNode.Hypervisor.Qmp;
using LiveMigration.HostNode.Storage;
using LiveMigration.HostNode.Storage.File;
using LiveMigration.Shared.Hosting;
using LiveMigration.Shared.Model;

namespace LiveMigration.Cli.Tests;

/// <summary>
/// One real cluster for every CLI test, as ClusterDemo builds it: two file domains created before the host
/// starts, a VM with a 3-volume chain on domain-a started in host-1's run directory (host-1 adopts it), then a
/// Coordinator and host-1 (SPM) as processes with fast cluster timings. Stopped by pid, VM included, on dispose.
/// </summary>
public sealed class ClusterFixture : IAsyncLifetime
{
    private const long MiB = 1 << 20;
    private readonly HttpClient _http = new() { Timeout = TimeSpan.FromSeconds(5) };

    public ClusterFixture()
    {
        // Short, under /tmp: QEMU's unix sockets live below it.
        DataDirectory = Path.Combine("/tmp", $"lsm-{Guid.NewGuid().ToString("N")[..8]}");
        Directory.CreateDirectory(DataDirectory);
        Cluster = new LocalCluster(DataDirectory) { ExtraHocon = ClusterNodeHosting.FastTestTimings };
    }

    public string DataDirectory { get; }
    public LocalCluster Cluster { get; }
    public string Api => Cluster.ApiUrl;
    public FileStorageDomain A { get; private set; } = null!;
    public FileStorageDomain B { get; private set; } = null!;
    public ImageId Image { get; private set; }
    public VmId Vm { get; private set; }

    public async Task InitializeAsync()
    {
        A = await FileStorageDomain.CreateAsync(Cluster.DomainRoot, DomainId.New(), "domain-a", 1L << 30);
        B = await FileStorageDomain.CreateAsync(Cluster.DomainRoot, DomainId.New(), "domain-b", 1L << 30);
        var pool = new StoragePool([A, B]);
        (Image, _) = await SampleImage.CreateThreeVolumeChainAsync(A, new SampleImageLayout(64 * MiB, 8 * MiB, 4 * MiB, 4 * MiB));
        Vm = VmId.New();
        await using (var starter = new QmpHypervisor(new QmpHypervisorOptions { RunDirectory = Cluster.HostRunDirectory("host-1") }))
            await starter.StartVmAsync(new VmSpec(Vm, "cli-vm", [await pool.ResolveChainAsync(A.Id, Image)]));

        Cluster.StartCoordinator();
        Cluster.StartHost("host-1", spm: true);
        await WaitForAsync("both members Up, host-1's VM and both domains in the inventory", async () =>
        {
            var cluster = await _http.GetFromJsonAsync<JsonElement>($"{Api}/api/cluster");
            var inventory = await _http.GetFromJsonAsync<JsonElement>($"{Api}/api/inventory");
            return cluster.GetProperty("members").EnumerateArray().Count(m => m.GetProperty("status").GetString() == "up") == 2
                   && inventory.GetProperty("domains").GetArrayLength() == 2
                   && inventory.GetProperty("vms").EnumerateArray().Any(v => v.GetProperty("vm").GetProperty("id").GetString() == Vm.ToString());
        }, TimeSpan.FromSeconds(45));
    }

    private async Task WaitForAsync(string what, Func<Task<bool>> condition, TimeSpan limit)
    {
        var deadline = DateTime.UtcNow + limit;
        while (true)
        {
            bool met;
            try { met = await condition(); }
            catch (Exception e) when (e is HttpRequestException or TaskCanceledException or JsonException or KeyNotFoundException) { met = false; }
            if (met) return;
            if (DateTime.UtcNow > deadline) throw new TimeoutException($"waited {limit.TotalSeconds:0} s for {what}\n{LogTails()}");
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
