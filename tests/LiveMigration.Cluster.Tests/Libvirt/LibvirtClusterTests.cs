using System.Diagnostics;
using System.Text;
using System.Text.Json;
using LiveMigration.Cli.Local;
using LiveMigration.Cluster.Tests.MultiProcess;
using LiveMigration.Demo.Cluster;
using LiveMigration.HostNode.Guest;
using LiveMigration.HostNode.Hypervisor.Libvirt;
using LiveMigration.HostNode.Storage;
using LiveMigration.HostNode.Storage.File;
using LiveMigration.Shared.Hosting;
using LiveMigration.Shared.Model;
using Xunit.Abstractions;

namespace LiveMigration.Cluster.Tests.Libvirt;

/// <summary>
/// Issue 5: a real Coordinator and a real HostNode that runs its VMs through libvirt (<c>--hypervisor libvirt</c>),
/// a VM (a transient libvirt domain) on a 3-volume chain whose guest writes through the drive's NBD export, moved
/// pre-copy A → B and post-copy B → A through the API; every acknowledged write is verified and nothing is left over.
/// The HostNode gets its switches from LocalCluster.HostArguments, as <c>lsm local up --hypervisor libvirt</c> passes them;
/// libvirtd comes from deploy/libvirt/setup.sh (LibvirtDaemon: stopped at the end only when this test started it).
/// </summary>
[Collection(MultiProcessCollection.Name)]
public sealed class LibvirtClusterTests(ITestOutputHelper output)
{
    private const long MiB = 1 << 20;
    private static readonly TimeSpan ToFinish = TimeSpan.FromSeconds(60);

    [Fact]
    public async Task A_libvirt_host_moves_a_writing_vms_three_volume_chain_pre_copy_and_back_post_copy_without_losing_a_write()
    {
        var clock = Stopwatch.StartNew();
        void Log(string line) => output.WriteLine($"[{clock.Elapsed.TotalSeconds,6:0.00} s] {line}");
        await using var daemon = await LibvirtDaemon.EnsureRunningAsync();
        var dataDirectory = Path.Combine("/tmp", $"lsm-{Guid.NewGuid().ToString("N")[..8]}");
        Directory.CreateDirectory(dataDirectory);
        // The hosts' switches as `lsm local up --hypervisor libvirt --libvirt-guest-export` makes them.
        var cluster = new LocalCluster(dataDirectory)
        {
            ExtraHocon = ClusterNodeHosting.FastTestTimings,
            HostArguments = new LocalClusterOptions(dataDirectory) { Hypervisor = "libvirt", LibvirtGuestExport = true }.HostArguments,
        };
        var hostRun = cluster.HostRunDirectory("host-1");
        using var api = new ApiClient(cluster.ApiUrl);
        VmId? vmId = null;
        GuestWorkload? guest = null;
        try
        {
            var a = await FileStorageDomain.CreateAsync(cluster.DomainRoot, DomainId.New(), "domain-a", 1L << 30);
            var b = await FileStorageDomain.CreateAsync(cluster.DomainRoot, DomainId.New(), "domain-b", 1L << 30);
            var pool = new StoragePool([a, b]);
            var (image, _) = await SampleImage.CreateThreeVolumeChainAsync(a, new SampleImageLayout(64 * MiB, 8 * MiB, 8 * MiB, 16 * MiB));

            // Started as host-1 will find it: a domain owned by host-1's run directory, its drive exported for the guest.
            vmId = VmId.New();
            DriveState drive;
            await using (var starter = new LibvirtHypervisor(new LibvirtHypervisorOptions { RunDirectory = hostRun, GuestNbdExport = true }))
                drive = (await starter.StartVmAsync(new VmSpec(vmId.Value, "libvirt-vm", [await pool.ResolveChainAsync(a.Id, image)]))).Drive(image);
            Log($"VM {vmId} running as libvirt domain lsm-{vmId} on image {image}; guest export {drive.GuestSocket}");

            cluster.StartCoordinator();
            var host = cluster.StartHost("host-1", spm: true);
            Assert.Equal(["--hypervisor", "libvirt", "--libvirt-uri", "qemu:///system", "--libvirt-guest-export", "true"], host.Arguments.TakeLast(6));
            await WaitForAsync("host-1 to report the VM and both domains", async () =>
            {
                var inventory = await api.GetAsync("/api/inventory");
                return inventory.GetProperty("vms").EnumerateArray().Any(v => v.GetProperty("vm").GetProperty("id").GetString() == vmId.ToString())
                       && inventory.GetProperty("domains").GetArrayLength() == 2;
            }, TimeSpan.FromSeconds(45), dataDirectory);
            Log($"cluster up: host-1 (pid {host.Pid}) adopted the domain through libvirt");

            guest = new GuestWorkload(new GuestWorkloadOptions(drive.GuestSocket, drive.ExportName, image, 0, 16 * MiB,
                Path.Combine(dataDirectory, "guest.ledger"), RateBytesPerSecond: 1 * MiB, Pattern: WritePattern.Random));
            await guest.StartAsync();
            await Task.Delay(500);

            foreach (var (strategy, from, to) in new[] { ("pre-copy", a, b), ("post-copy", b, a) })
            {
                var moving = Stopwatch.StartNew();
                var id = await api.StartMigrationAsync(vmId.ToString()!, image.ToString(), to.Id.ToString(), strategy);
                var final = await WaitForFinishAsync(api, id, dataDirectory, Log);
                Assert.True(final == "completed", $"{strategy} {id} ended {final}\n{LogTails(dataDirectory)}");
                output.WriteLine($"MEASURED libvirt cluster {strategy} {from.Name} → {to.Name}: {moving.Elapsed.TotalMilliseconds:0} ms from the request to completed");
                await WaitForAsync($"the source image to be deleted from {from.Name}",
                    async () => !(await from.ListImagesAsync()).Contains(image), TimeSpan.FromSeconds(15), dataDirectory);
            }

            var stats = await guest.StopAsync();
            Log($"guest: {stats.Writes} writes acknowledged, {stats.Errors} errors, longest write {stats.MaxLatency.TotalMilliseconds:0} ms");
            Assert.True(stats.Errors == 0, $"the guest saw {stats.Errors} errors: {stats.LastError}");
            Assert.True(stats.Writes > 0, "the guest wrote nothing");
            var report = await GuestVerifier.VerifyThroughNbdAsync(drive.GuestSocket, drive.ExportName, guest.Ledger);
            Log($"verification through NBD: {report}");
            Assert.True(report.Ok, $"acknowledged writes lost: {string.Join("; ", report.Mismatches.Take(5))}");

            var leftovers = (await a.RemoveIllegalLeftoversAsync(new HashSet<ImageId>())).Count + (await b.RemoveIllegalLeftoversAsync(new HashSet<ImageId>())).Count;
            Assert.True(leftovers == 0, $"{leftovers} ILLEGAL leftovers\n{LogTails(dataDirectory)}");
            Assert.Empty(await b.ListImagesAsync());
            var chain = await pool.ResolveChainAsync(a.Id, image);
            Assert.Equal(3 + 1, chain.Layers.Count); // post-copy adds the new leaf on top of the copied chain
            var vm = await api.GetAsync("/api/inventory");
            Assert.Contains(vm.GetProperty("vms").EnumerateArray(), v => v.GetProperty("vm").GetProperty("id").GetString() == vmId.ToString());
            await using var reader = new LibvirtHypervisor(new LibvirtHypervisorOptions { RunDirectory = hostRun });
            var running = Assert.Single(await reader.AdoptRunningVmsAsync(), v => v.Id == vmId);
            Assert.Equal(chain.Layers.Select(l => l.Path), running.Drive(image).OpenChain);
            Assert.Empty(Directory.EnumerateFiles(cluster.DomainRoot, "*.lsm-*", SearchOption.AllDirectories));
        }
        finally
        {
            if (guest is not null) await guest.DisposeAsync();
            await cluster.DisposeAsync(); // the hosts first (SIGTERM: their coordinated shutdown), then the Coordinator
            if (vmId is { } id)
            {
                await using var stopper = new LibvirtHypervisor(new LibvirtHypervisorOptions { RunDirectory = hostRun });
                await stopper.StopVmAsync(id);
            }
            Directory.Delete(dataDirectory, recursive: true);
        }
    }

    private static async Task<string> WaitForFinishAsync(ApiClient api, string id, string dataDirectory, Action<string> log)
    {
        var deadline = DateTime.UtcNow + ToFinish;
        var last = "";
        while (DateTime.UtcNow < deadline)
        {
            var m = await api.GetAsync($"/api/migrations/{id}");
            var status = m.GetProperty("status").GetString() ?? "";
            var disk = m.GetProperty("disks")[0];
            var now = $"{status} at {(disk.GetProperty("step").ValueKind == JsonValueKind.String ? disk.GetProperty("step").GetString() : "-")} " +
                      $"{disk.GetProperty("done").GetInt64()}/{disk.GetProperty("total").GetInt64()}";
            if (now != last) log($"  {id[..8]}: {now}");
            last = now;
            if (status is "completed" or "cancelled" or "abandoned" || status.StartsWith("failed") || status.StartsWith("suspended")) return status;
            await Task.Delay(100);
        }
        throw new Xunit.Sdk.XunitException($"migration {id} did not finish within {ToFinish.TotalSeconds:0} s; last {last}\n{LogTails(dataDirectory)}");
    }

    private static async Task WaitForAsync(string what, Func<Task<bool>> condition, TimeSpan limit, string dataDirectory)
    {
        var deadline = DateTime.UtcNow + limit;
        while (true)
        {
            bool met;
            try { met = await condition(); }
            catch (Exception e) when (e is HttpRequestException or TaskCanceledException or ApiException or JsonException) { met = false; }
            if (met) return;
            if (DateTime.UtcNow > deadline) throw new Xunit.Sdk.XunitException($"waited {limit.TotalSeconds:0} s for {what}\n{LogTails(dataDirectory)}");
            await Task.Delay(200);
        }
    }

    private static string LogTails(string dataDirectory)
    {
        var logs = Path.Combine(dataDirectory, "logs");
        if (!Directory.Exists(logs)) return "(no node logs)";
        var text = new StringBuilder();
        foreach (var log in Directory.GetFiles(logs, "*.log").Order())
        {
            using var stream = new FileStream(log, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
            using var reader = new StreamReader(stream);
            text.AppendLine($"--- {Path.GetFileName(log)} ---");
            foreach (var line in reader.ReadToEnd().Split('\n').TakeLast(40)) text.AppendLine(line);
        }
        return text.ToString();
    }
}
