using System.Diagnostics;
using System.Text.Json;
using LiveMigration.Cli.Api;
using LiveMigration.Cli.Local;
using LiveMigration.Demo.Cluster;
using LiveMigration.HostNode.Guest;
using LiveMigration.HostNode.Hypervisor;
using LiveMigration.HostNode.Hypervisor.Libvirt;
using LiveMigration.HostNode.Hypervisor.Qmp;
using LiveMigration.HostNode.Processes;
using LiveMigration.HostNode.Storage;
using LiveMigration.HostNode.Storage.File;
using LiveMigration.Shared.Hosting;
using LiveMigration.Shared.Model;

namespace LiveMigration.Demo;

/// <summary>
/// The real thing on one machine: a Coordinator and two HostNode processes on loopback with a SQLite
/// journal; a VM on host-1 whose guest writes while its disk moves pre-copy A → B and post-copy back,
/// each move started and watched through the Coordinator's API.
/// </summary>
internal static class ClusterDemo
{
    private const long MiB = 1 << 20;

    public static async Task<int> RunAsync(DemoOptions options)
    {
        var dataDir = Path.GetFullPath(options.DataDir);
        var libvirt = options.Hypervisor == "libvirt";
        Console.WriteLine("LiveMigration.Akka demo: a local cluster moves a running VM's disk while its guest writes");
        Console.WriteLine($"data directory: {dataDir} (kept afterwards: domains, journal, logs)");

        // libvirt: the hosts run the VM through libvirtd. One that answers already is used and left alone; otherwise
        // deploy/libvirt/setup.sh sets this machine up and starts one, which is stopped by its pid at the end.
        LibvirtDaemon? startedDaemon;
        try
        {
            startedDaemon = libvirt && !await LibvirtCheck.AnswersAsync(LibvirtCheck.DefaultUri) ? await LibvirtDaemon.EnsureRunningAsync() : null;
        }
        catch (OperationFailedException e)
        {
            Console.Error.WriteLine($"demo: libvirtd does not answer at {LibvirtCheck.DefaultUri} and {LibvirtDaemon.SetupScript} could not start it " +
                                    $"(it must run as root; deploy/libvirt/README.md explains it): {e.Message}");
            return 1;
        }
        await using var daemon = startedDaemon;
        if (libvirt)
            Console.WriteLine(daemon is null
                ? $"hypervisor libvirt: libvirtd answers at {LibvirtCheck.DefaultUri} already (left running afterwards)"
                : $"hypervisor libvirt: deploy/libvirt/setup.sh {(daemon.StartedHere ? "started" : "found")} libvirtd pid {daemon.Pid} in {Ms(daemon.Took)}" +
                  (daemon.StartedHere ? " (stopped at the end)" : ""));
        await DemoSetup.ClearPreviousRunAsync(dataDir, libvirt);

        // Domains and the VM are prepared in the layout `lsm local up` uses, before the nodes start: host-1 adopts
        // the VM from its run directory and both hosts find the domains under the domain root. Under libvirt every
        // host runs `--hypervisor libvirt`, with the drive's NBD export for the stand-in guest (demo only: it taints the domain).
        var local = new LocalClusterOptions(dataDir) { Hosts = 2, ApiPort = 0, Hypervisor = options.Hypervisor, LibvirtGuestExport = libvirt };
        // As `lsm local up` does: QEMU runs as its own unprivileged account, and the volumes made here belong to its group.
        QemuAccount? qemu = null;
        if (!libvirt && await LocalQemuAccount.PrepareAsync(dataDir, [], line => Console.WriteLine($"    {line}"), CancellationToken.None) is { } qemuUser)
        {
            qemu = QemuAccount.Find(qemuUser);
            StorageModes.UseQemuGroup(qemu.Gid);
            local = local with { QemuUser = qemuUser };
            Console.WriteLine($"QEMU runs as {qemuUser}, not root");
        }
        var a = await FileStorageDomain.CreateAsync(local.DomainRoot, DomainId.New(), "domain-a", 4L << 30);
        var b = await FileStorageDomain.CreateAsync(local.DomainRoot, DomainId.New(), "domain-b", 4L << 30);
        var pool = new StoragePool([a, b]);
        var layout = new SampleImageLayout(256 * MiB, 48 * MiB, 32 * MiB, 32 * MiB);
        var (image, _) = await SampleImage.CreateThreeVolumeChainAsync(a, layout);
        Console.WriteLine($"[1/6] domains domain-a and domain-b; image {image} on domain-a: raw base → qcow2 → qcow2 leaf ({Mib(layout.BaseData + layout.MiddleData + layout.LeafData)} MiB of data)");

        var vmId = VmId.New();
        VmInfo vm;
        await using (var starter = Hypervisor(options.Hypervisor, local.HostRunDirectory("host-1"), qemu))
            vm = await starter.StartVmAsync(new VmSpec(vmId, "demo-vm", [await pool.ResolveChainAsync(a.Id, image)]));
        var drive = vm.Drive(image);
        Console.WriteLine($"[2/6] VM {vmId} running on host-1 " +
                          (libvirt ? $"as libvirt domain lsm-{vmId} (QEMU pid {vm.Pid})" : $"(QEMU pid {vm.Pid})") +
                          $", disk exported over NBD at {drive.GuestSocket}");

        var exit = 1;
        var clock = Stopwatch.StartNew();
        try
        {
            // The same launcher as `lsm local up`: detached nodes, DATA/local.json, back once every member is Up
            // and both hosts have reported.
            var cluster = await LocalClusterLauncher.UpAsync(local);
            using var api = new ApiClient(cluster.ApiUrl, cluster.ApiTokenFile is { } tokenFile ? ApiTokenFile.Read(tokenFile) : null);
            await WaitForAsync("host-1 to report the VM and both domains", async () =>
            {
                var inventory = await api.GetAsync("/api/inventory");
                return inventory.GetProperty("vms").EnumerateArray().Any(v => v.GetProperty("vm").GetProperty("id").GetString() == vmId.ToString())
                       && inventory.GetProperty("domains").GetArrayLength() == 2;
            }, TimeSpan.FromSeconds(60));
            // The SPM starts only once its host holds the pool lease (a fresh lease still takes the margin, 5 s, to
            // see off a racing acquirer): waited for here, so the migrations' times below are the moves, not that start.
            await WaitForAsync("a host to run the SPM", async () =>
                (await api.GetAsync("/api/hosts")).GetProperty("hosts").EnumerateArray().Any(h => h.GetProperty("spm").GetBoolean()),
                TimeSpan.FromSeconds(60));
            var pids = cluster.Nodes.ToDictionary(n => n.Name, n => n.Pid);
            Console.WriteLine($"[3/6] cluster up in {Ms(clock.Elapsed)}: Coordinator pid {pids["coordinator"]} (API {cluster.ApiUrl}), host-1 pid {pids["host-1"]} (SPM), host-2 pid {pids["host-2"]}" +
                              (libvirt ? "; both hosts --hypervisor libvirt, host-1 adopted the domain" : ""));

            var ledgerPath = Path.Combine(dataDir, "guest.ledger");
            await using var guest = new GuestWorkload(new GuestWorkloadOptions(drive.GuestSocket, drive.ExportName, image,
                0, 64 * MiB, ledgerPath, RateBytesPerSecond: options.GuestRate, Pattern: WritePattern.Random,
                FlushInterval: GuestWorkload.DefaultFlushInterval)); // a guest that cares: what a FLUSH covered must survive anything
            await guest.StartAsync();
            await Task.Delay(TimeSpan.FromSeconds(1));
            Console.WriteLine($"[4/6] guest writing stamped 4 KiB blocks at {Mib(options.GuestRate)} MiB/s: {guest.Stats.Writes} writes so far");

            var timings = new List<(string, TimeSpan)>();
            foreach (var (step, strategy, to) in new[] { ("[5/6] pre-copy domain-a → domain-b", "pre-copy", b), ("[6/6] post-copy domain-b → domain-a", "post-copy", a) })
            {
                Console.WriteLine(step);
                var started = Stopwatch.StartNew();
                guest.ResetLongestStall();
                var id = await api.StartMigrationAsync(vmId.ToString(), image.ToString(), to.Id.ToString(), strategy,
                    strategy == "pre-copy" ? "write-blocking" : "background", options.MirrorSpeed);
                Console.WriteLine($"    migration {id} accepted");
                var final = await WatchAsync(api, id, TimeSpan.FromMinutes(5));
                timings.Add((strategy, started.Elapsed));
                Console.WriteLine($"    {final} in {Ms(started.Elapsed)}; longest guest write during the move {Ms(guest.Stats.MaxLatency)}");
                if (final != "completed") return 1;
                await WaitForAsync("the inventory to show the disk on its new domain", async () =>
                    (await api.GetAsync("/api/inventory")).GetProperty("vms").EnumerateArray()
                        .Where(v => v.GetProperty("vm").GetProperty("id").GetString() == vmId.ToString())
                        .SelectMany(v => v.GetProperty("vm").GetProperty("drives").EnumerateArray())
                        .All(d => d.GetProperty("chain").EnumerateArray().All(l => l.GetProperty("domain").GetString() == to.Id.ToString())),
                    TimeSpan.FromSeconds(30));
            }

            var stats = await guest.StopAsync();
            var live = await GuestVerifier.VerifyThroughNbdAsync(drive.GuestSocket, drive.ExportName, guest.Ledger);
            var leftovers = (await a.RemoveIllegalLeftoversAsync(new HashSet<ImageId>())).Count + (await b.RemoveIllegalLeftoversAsync(new HashSet<ImageId>())).Count;
            Console.WriteLine();
            Console.WriteLine($"guest: {stats.Writes} writes acknowledged ({Mib(stats.Bytes):0.0} MiB), {stats.DurableWrites} durable " +
                              $"({stats.Flushes} flushes, one every {GuestWorkload.DefaultFlushInterval.TotalMilliseconds:0} ms, longest {Ms(stats.MaxFlushLatency)}), {stats.Errors} errors");
            Console.WriteLine($"verification through NBD: {(live.Ok ? $"OK, {live.BlocksChecked} blocks checked ({live.DurableBlocks} durable), every acknowledged write found" : $"FAILED, {live.Lost.Count} durable blocks lost, {live.InDoubt.Count} in doubt")}");
            Console.WriteLine($"leftovers: {leftovers} ILLEGAL volumes; domain-b holds {(await b.ListImagesAsync()).Count} images");
            foreach (var (strategy, took) in timings) Console.WriteLine($"  {strategy,-10} {Ms(took)} from request to completed");
            exit = live.Ok && stats.Errors == 0 && leftovers == 0 ? 0 : 1;
        }
        catch (CliFailure failure)
        {
            Console.Error.WriteLine($"demo: {failure.Message}");
        }
        finally
        {
            // As `lsm local down`: the nodes by pid, then the VMs their hosts ran.
            await LocalClusterLauncher.DownAsync(dataDir);
            await using var stopper = Hypervisor(options.Hypervisor, local.HostRunDirectory("host-1"));
            foreach (var running in await stopper.AdoptRunningVmsAsync()) await stopper.StopVmAsync(running.Id);
            Console.WriteLine(libvirt ? "stopped the cluster's processes and the VM's libvirt domain" : "stopped the cluster's processes and the VM");
        }
        if (daemon is { StartedHere: true })
        {
            // Here rather than at the end of the scope, so the operator reads it before the verdict (a second dispose does nothing).
            await daemon.DisposeAsync();
            Console.WriteLine($"stopped libvirtd pid {daemon.Pid}, which this demo started");
        }
        Console.WriteLine(exit == 0 ? "demo: OK, nothing lost" : "demo: FAILED");
        return exit;
    }

    /// <summary>The adapter host-1 runs, here in the demo's own process to start the VM host-1 then adopts (and to stop it afterwards).</summary>
    internal static IHypervisor Hypervisor(string hypervisor, string runDirectory, QemuAccount? qemu = null) => hypervisor == "libvirt"
        ? new LibvirtHypervisor(new LibvirtHypervisorOptions { RunDirectory = runDirectory, GuestNbdExport = true })
        : new QmpHypervisor(new QmpHypervisorOptions { RunDirectory = runDirectory, QemuAccount = qemu });

    /// <summary>Polls the migration and draws its progress until it ends; returns its final status.</summary>
    private static async Task<string> WatchAsync(ApiClient api, string id, TimeSpan limit)
    {
        var deadline = DateTime.UtcNow + limit;
        string? lastLine = null;
        while (DateTime.UtcNow < deadline)
        {
            var m = await api.GetAsync($"/api/migrations/{id}");
            var status = m.GetProperty("status").GetString()!;
            var disk = m.GetProperty("disks")[0];
            var line = $"    {status,-12} {disk.GetProperty("step").GetString() ?? "-",-26} {Bar(disk.GetProperty("done").GetInt64(), disk.GetProperty("total").GetInt64())}";
            if (line != lastLine) Console.WriteLine(line);
            lastLine = line;
            if (status is "completed" || status.StartsWith("failed") || status is "cancelled" or "abandoned" || status.StartsWith("suspended"))
                return status + (m.TryGetProperty("error", out var e) && e.ValueKind == JsonValueKind.String ? $" ({e.GetString()})" : "");
            await Task.Delay(200);
        }
        return "timed out";
    }

    /// <summary>Polls until the condition holds; a timeout names what it waited for. (The copy bench waits the same way.)</summary>
    internal static async Task WaitForAsync(string what, Func<Task<bool>> condition, TimeSpan limit)
    {
        var deadline = DateTime.UtcNow + limit;
        while (!await condition())
        {
            if (DateTime.UtcNow > deadline) throw new TimeoutException($"waited {limit.TotalSeconds:0} s for {what}");
            await Task.Delay(250);
        }
    }

    private static string Bar(long done, long total)
    {
        if (total <= 0) return "";
        var filled = (int)Math.Clamp(done * 30 / total, 0, 30);
        return $"[{new string('#', filled)}{new string('.', 30 - filled)}] {done / (double)MiB,7:0.0} / {total / (double)MiB:0.0} MiB";
    }

    private static double Mib(long bytes) => bytes / (double)MiB;
    private static string Ms(TimeSpan t) => t.TotalSeconds >= 1 ? $"{t.TotalSeconds:0.00} s" : $"{t.TotalMilliseconds:0} ms";
}
