using LiveMigration.Cli.Local;
using LiveMigration.Demo.Cluster;
using LiveMigration.HostNode.Guest;
using LiveMigration.HostNode.Hypervisor;
using LiveMigration.HostNode.Processes;
using LiveMigration.Shared.Hosting;
using LiveMigration.HostNode.Storage;
using LiveMigration.HostNode.Storage.File;
using LiveMigration.Shared.Model;

namespace LiveMigration.Demo.Bench;

/// <summary>What a stall session measured on one adapter.</summary>
/// <param name="SingleDisk">The switches of the one-disk VM's moves, as the hosts timed them.</param>
/// <param name="FourDisks">The switches of the four-disk VM's moves (all four disks in one request).</param>
/// <param name="GuestLongestWriteMs">Per move of the one-disk VM, the longest write its guest saw from the request to completed.</param>
internal sealed record SwitchStalls(List<(string Step, double Ms)> SingleDisk, List<(string Step, double Ms)> FourDisks, List<double> GuestLongestWriteMs);

/// <summary>
/// The switch stall on one adapter (issue "The copy path at real sizes": ≤ 20 ms p99 over 20 migrations, for the QMP and
/// the libvirt adapter, and with a VM of 4 disks moving in one request): a fresh local cluster whose hosts run
/// <paramref name="hypervisor"/> moves a small one-disk VM back and forth (pre-copy and post-copy in turn) while its guest
/// writes random 4 KiB blocks, then a VM with four small disks, all four in one request. Each switch is timed by the
/// host that makes it; the guest's longest write per move is the stall as the guest felt it.
/// </summary>
internal static class SwitchStallBench
{
    private const long MiB = 1 << 20;

    /// <summary>The light guest on the one-disk VM: enough writes in flight to meet every switch, few enough not to slow the moves.</summary>
    private const long GuestRate = 4 * MiB;

    public static async Task<SwitchStalls> RunAsync(string hypervisor, string dataDir, int migrations, int fourDiskMigrations)
    {
        var libvirt = hypervisor == "libvirt";
        await DemoSetup.ClearPreviousRunAsync(dataDir, libvirt);
        var local = new LocalClusterOptions(dataDir) { Hosts = 2, ApiPort = 0, Hypervisor = hypervisor, LibvirtGuestExport = libvirt };
        QemuAccount? qemu = null;
        if (!libvirt && await LocalQemuAccount.PrepareAsync(dataDir, [], _ => { }, CancellationToken.None) is { } qemuUser)
        {
            qemu = QemuAccount.Find(qemuUser);
            StorageModes.UseQemuGroup(qemu.Gid);
            local = local with { QemuUser = qemuUser };
        }
        var a = await FileStorageDomain.CreateAsync(local.DomainRoot, DomainId.New(), "domain-a", 4L << 30);
        var b = await FileStorageDomain.CreateAsync(local.DomainRoot, DomainId.New(), "domain-b", 4L << 30);
        var pool = new StoragePool([a, b]);
        var images = new List<ImageId>();
        for (var i = 0; i < 5; i++) images.Add((await SampleImage.CreateThreeVolumeChainAsync(a, SampleImageLayout.Small)).Image);
        var (oneDiskVm, fourDiskVm) = (VmId.New(), VmId.New());
        DriveState guestDrive;
        await using (var starter = ClusterDemo.Hypervisor(hypervisor, local.HostRunDirectory("host-1"), qemu))
        {
            guestDrive = (await starter.StartVmAsync(new VmSpec(oneDiskVm, "stall-one-disk", [await pool.ResolveChainAsync(a.Id, images[0])]))).Drive(images[0]);
            var chains = new List<DriveChain>();
            foreach (var image in images.Skip(1)) chains.Add(await pool.ResolveChainAsync(a.Id, image));
            await starter.StartVmAsync(new VmSpec(fourDiskVm, "stall-four-disks", chains));
        }

        var result = new SwitchStalls([], [], []);
        try
        {
            var cluster = await LocalClusterLauncher.UpAsync(local);
            using var api = new ApiClient(cluster.ApiUrl, cluster.ApiTokenFile is { } tokenFile ? ApiTokenFile.Read(tokenFile) : null);
            await ClusterDemo.WaitForAsync($"both VMs, both domains and the SPM ({hypervisor})", async () =>
            {
                var inventory = await api.GetAsync("/api/inventory");
                var hosts = await api.GetAsync("/api/hosts");
                return inventory.GetProperty("vms").GetArrayLength() == 2 && inventory.GetProperty("domains").GetArrayLength() == 2
                       && hosts.GetProperty("hosts").EnumerateArray().Any(h => h.GetProperty("spm").GetBoolean());
            }, TimeSpan.FromSeconds(90));

            await using (var guest = new GuestWorkload(new GuestWorkloadOptions(guestDrive.GuestSocket, guestDrive.ExportName, images[0], 0,
                             SampleImageLayout.Small.Capacity, Path.Combine(dataDir, "guest.ledger"), BlockSize: 4096, RateBytesPerSecond: GuestRate,
                             Pattern: WritePattern.Random, FlushInterval: GuestWorkload.DefaultFlushInterval)))
            {
                await guest.StartAsync();
                for (var i = 0; i < migrations; i++)
                {
                    guest.ResetLongestStall();
                    await CopyBench.MoveAsync(api, oneDiskVm, [images[0]], i % 2 == 0 ? b : a, i % 4 < 2 ? "pre-copy" : "post-copy", result.SingleDisk);
                    result.GuestLongestWriteMs.Add(guest.Stats.MaxLatency.TotalMilliseconds);
                }
                var final = await guest.StopAsync();
                if (final.Errors > 0) throw new InvalidOperationException($"the guest failed during the {hypervisor} stall moves: {final.LastError}");
            }
            for (var i = 0; i < fourDiskMigrations; i++)
                await CopyBench.MoveAsync(api, fourDiskVm, images.Skip(1).ToList(), i % 2 == 0 ? b : a, i % 4 < 2 ? "pre-copy" : "post-copy", result.FourDisks);
            return result;
        }
        finally
        {
            // as `lsm local down` (and the demo under libvirt): the nodes, then the VMs their hosts ran
            await LocalClusterLauncher.DownAsync(dataDir);
            await using (var stopper = ClusterDemo.Hypervisor(hypervisor, local.HostRunDirectory("host-1")))
                foreach (var running in await stopper.AdoptRunningVmsAsync()) await stopper.StopVmAsync(running.Id);
            Directory.Delete(dataDir, recursive: true);
        }
    }
}
