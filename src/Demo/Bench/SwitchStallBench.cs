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
/// <param name="GuestAcrossSwitch">Per switch of either VM, the longest write the guest of that disk had in flight during the switch step.</param>
/// <param name="GuestFlushAcrossSwitchMs">Per switch, the longest FLUSH the guest had in flight then (a guest that fsyncs waits for it too).</param>
internal sealed record SwitchStalls(List<(string Step, double Ms)> SingleDisk, List<(string Step, double Ms)> FourDisks, List<double> GuestLongestWriteMs,
    List<(string Step, bool FourDisks, double Ms)> GuestAcrossSwitch, List<double> GuestFlushAcrossSwitchMs);

/// <summary>A switch step of one disk, from when the Coordinator sent it to when its answer came (the host's switch lies within).</summary>
internal sealed record SwitchWindow(ImageId Image, string Step, DateTimeOffset From, DateTimeOffset To);

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

    /// <summary>Each of the four-disk VM's guests: four of them write as much as the one-disk VM's guest.</summary>
    private const long FourDiskGuestRate = MiB;

    private static GuestWorkload Guest(DriveState drive, ImageId image, long rate, string ledger) =>
        new(new GuestWorkloadOptions(drive.GuestSocket, drive.ExportName, image, 0, SampleImageLayout.Small.Capacity, ledger, BlockSize: 4096,
            RateBytesPerSecond: rate, Pattern: WritePattern.Random, FlushInterval: GuestWorkload.DefaultFlushInterval));

    /// <summary>
    /// What the disk's guest felt across each switch: its longest write (and FLUSH) in flight during the switch step as the
    /// Coordinator timed it, which holds the host's flush before the switch and the switch itself. A guest that only waited
    /// for its FLUSH during a (short) switch had no write in flight: that switch counts in the FLUSH figure alone, and is said.
    /// A guest with no request in flight would say nothing about the switch: the bench stops rather than count it as no stall.
    /// </summary>
    private static void FeltAcross(List<SwitchWindow> switches, Func<ImageId, GuestWorkload> guestOf, bool fourDisks, SwitchStalls result)
    {
        foreach (var window in switches)
        {
            var felt = guestOf(window.Image).StallDuring(window.From, window.To);
            if (felt.LongestWrite is null && felt.LongestFlush is { } only)
            {
                Console.WriteLine($"     guest of disk {window.Image} had only a FLUSH in flight ({only.TotalMilliseconds:0.0} ms) during its {window.Step} " +
                                  $"({window.From:HH:mm:ss.fff} – {window.To:HH:mm:ss.fff}): counted in the FLUSH figure, not the write figure");
                result.GuestFlushAcrossSwitchMs.Add(Math.Round(only.TotalMilliseconds, 1));
                continue;
            }
            if (felt.LongestWrite is not { } write)
                throw new InvalidOperationException($"the guest of disk {window.Image} sent nothing during its {window.Step} ({window.From:O} – {window.To:O})");
            result.GuestAcrossSwitch.Add((window.Step, fourDisks, Math.Round(write.TotalMilliseconds, 1)));
            // a stall over the target, with when it happened, to set beside the hosts' logs
            if (write > TimeSpan.FromMilliseconds(20))
                Console.WriteLine($"     guest of disk {window.Image} waited {write.TotalMilliseconds:0.0} ms for a write sent at {felt.LongestWriteSentAt:HH:mm:ss.fff} " +
                                  $"during its {window.Step} ({window.From:HH:mm:ss.fff} – {window.To:HH:mm:ss.fff}, {(window.To - window.From).TotalMilliseconds:0} ms); " +
                                  $"longest FLUSH then {(felt.LongestFlush is { } f ? $"{f.TotalMilliseconds:0.0} ms" : "none")}");
            if (felt.LongestFlush is { } flush) result.GuestFlushAcrossSwitchMs.Add(Math.Round(flush.TotalMilliseconds, 1));
        }
    }

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
        List<DriveState> fourDrives;
        await using (var starter = ClusterDemo.Hypervisor(hypervisor, local.HostRunDirectory("host-1"), qemu))
        {
            guestDrive = (await starter.StartVmAsync(new VmSpec(oneDiskVm, "stall-one-disk", [await pool.ResolveChainAsync(a.Id, images[0])]))).Drive(images[0]);
            var chains = new List<DriveChain>();
            foreach (var image in images.Skip(1)) chains.Add(await pool.ResolveChainAsync(a.Id, image));
            var four = await starter.StartVmAsync(new VmSpec(fourDiskVm, "stall-four-disks", chains));
            fourDrives = images.Skip(1).Select(four.Drive).ToList();
        }

        var result = new SwitchStalls([], [], [], [], []);
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

            // nothing left to write back from what ran before (the big chain the copy bench made, the other adapter's
            // session), so the first session's switches do not meet that write-out and the second's do not miss it
            await CopyBench.SettleAsync();
            await using (var guest = Guest(guestDrive, images[0], GuestRate, Path.Combine(dataDir, "guest.ledger")))
            {
                await guest.StartAsync();
                for (var i = 0; i < migrations; i++)
                {
                    guest.ResetLongestStall();
                    var switches = new List<SwitchWindow>();
                    await CopyBench.MoveAsync(api, oneDiskVm, [images[0]], i % 2 == 0 ? b : a, i % 4 < 2 ? "pre-copy" : "post-copy", result.SingleDisk,
                        switches: switches);
                    result.GuestLongestWriteMs.Add(guest.Stats.MaxLatency.TotalMilliseconds);
                    FeltAcross(switches, _ => guest, fourDisks: false, result);
                }
                var final = await guest.StopAsync();
                if (final.Errors > 0) throw new InvalidOperationException($"the guest failed during the {hypervisor} stall moves: {final.LastError}");
            }

            // a guest on each of the four disks, so each disk's switch meets writes
            var guests = fourDrives.Select((drive, i) => Guest(drive, images[i + 1], FourDiskGuestRate, Path.Combine(dataDir, $"guest-{i + 1}.ledger"))).ToList();
            try
            {
                foreach (var g in guests) await g.StartAsync();
                for (var i = 0; i < fourDiskMigrations; i++)
                {
                    var switches = new List<SwitchWindow>();
                    await CopyBench.MoveAsync(api, fourDiskVm, images.Skip(1).ToList(), i % 2 == 0 ? b : a, i % 4 < 2 ? "pre-copy" : "post-copy",
                        result.FourDisks, switches: switches);
                    FeltAcross(switches, image => guests[images.IndexOf(image) - 1], fourDisks: true, result);
                }
                foreach (var g in guests)
                    if ((await g.StopAsync()).Errors > 0)
                        throw new InvalidOperationException($"a guest of the four-disk VM failed during the {hypervisor} stall moves: {g.Stats.LastError}");
            }
            finally
            {
                foreach (var g in guests) await g.DisposeAsync();
            }
            return result;
        }
        finally
        {
            // as `lsm local down` (and the demo under libvirt): the nodes, then the VMs their hosts ran
            await LocalClusterLauncher.DownAsync(dataDir);
            await using (var stopper = ClusterDemo.Hypervisor(hypervisor, local.HostRunDirectory("host-1")))
                foreach (var running in await stopper.AdoptRunningVmsAsync()) await stopper.StopVmAsync(running.Id);
            // the nodes' logs stay beside the figures (a stall printed with its time is read against the host's log)
            BenchProbes.KeepLogs(dataDir, $"switch-stall-{hypervisor}-logs");
            Directory.Delete(dataDir, recursive: true);
        }
    }
}
