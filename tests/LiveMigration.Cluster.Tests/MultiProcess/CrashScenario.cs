using System.Diagnostics;
using System.Text;
using System.Text.Json;
using LiveMigration.Cli.Local;
using LiveMigration.Demo.Cluster;
using LiveMigration.HostNode.Guest;
using LiveMigration.HostNode.Hypervisor.Qmp;
using LiveMigration.HostNode.Storage;
using LiveMigration.HostNode.Storage.File;
using LiveMigration.Shared.Hosting;
using LiveMigration.Shared.Model;
using Xunit.Abstractions;

namespace LiveMigration.Cluster.Tests.MultiProcess;

/// <summary>What the API showed of a migration at one poll.</summary>
public sealed record MigrationSnapshot(string Status, string? Step, long Done, long Total, string? Error)
{
    public bool Finished => Status is "completed" or "cancelled" or "abandoned" || Status.StartsWith("failed") || Status.StartsWith("suspended");

    public override string ToString() => $"{Status} at {Step ?? "-"} {Done}/{Total}{(Error is null ? "" : $" ({Error})")}";
}

/// <summary>
/// One real local cluster for a crash test, as ClusterDemo builds it: a Coordinator and two HostNode
/// processes on loopback with the SQLite journal, two file domains, a VM with a 3-volume chain started
/// in host-1's run directory (host-1 adopts it), the guest writing over NBD. Everything it starts is
/// stopped by pid on dispose, and its data directory (short, under /tmp, for the unix sockets) removed.
/// </summary>
public sealed class CrashScenario : IAsyncDisposable
{
    private const long MiB = 1 << 20;
    /// <summary>A small leaf (what a pre-copy mirror copies) so a throttled mirror lasts about ten seconds.</summary>
    public static readonly SampleImageLayout Layout = new(64 * MiB, 8 * MiB, 8 * MiB, 16 * MiB);

    private readonly ITestOutputHelper _output;
    private readonly Stopwatch _clock = Stopwatch.StartNew();

    private CrashScenario(ITestOutputHelper output, string dataDirectory)
    {
        _output = output;
        DataDirectory = dataDirectory;
        Cluster = new LocalCluster(dataDirectory)
        {
            ExtraHocon = ClusterNodeHosting.FastTestTimings,
            // Nodes are killed and restarted: the hosts are seeds too, so a restarted node rejoins the others.
            SeedHosts = ["host-1", "host-2"],
        };
        Api = new ApiClient(Cluster.ApiUrl);
    }

    public string DataDirectory { get; }
    public LocalCluster Cluster { get; }
    public ApiClient Api { get; }
    public FileStorageDomain A { get; private set; } = null!;
    public FileStorageDomain B { get; private set; } = null!;
    public StoragePool Pool { get; private set; } = null!;
    public ImageId Image { get; private set; }
    public IReadOnlyList<VolumeId> SourceVolumes { get; private set; } = [];
    public VmInfo Vm { get; private set; } = null!;
    public DriveState Drive { get; private set; } = null!;
    public int QemuPid => Vm.Pid ?? throw new InvalidOperationException($"VM {Vm.Id} reports no QEMU pid");
    public GuestWorkload? Guest { get; private set; }
    public NodeProcess Coordinator { get; private set; } = null!;
    public NodeProcess Host1 { get; set; } = null!;
    public NodeProcess Host2 { get; private set; } = null!;

    /// <summary>Builds the domains, the VM and the cluster, and waits until the inventory knows the VM.</summary>
    public static async Task<CrashScenario> StartAsync(ITestOutputHelper output)
    {
        var dataDirectory = Path.Combine("/tmp", $"lsm-{Guid.NewGuid().ToString("N")[..8]}");
        Directory.CreateDirectory(dataDirectory);
        var scenario = new CrashScenario(output, dataDirectory);
        try
        {
            await scenario.SetUpAsync();
            return scenario;
        }
        catch
        {
            await scenario.DisposeAsync();
            throw;
        }
    }

    private async Task SetUpAsync()
    {
        A = await FileStorageDomain.CreateAsync(Cluster.DomainRoot, DomainId.New(), "domain-a", 1L << 30);
        B = await FileStorageDomain.CreateAsync(Cluster.DomainRoot, DomainId.New(), "domain-b", 1L << 30);
        Pool = new StoragePool([A, B]);
        (Image, SourceVolumes) = await SampleImage.CreateThreeVolumeChainAsync(A, Layout);

        await using (var starter = new QmpHypervisor(new QmpHypervisorOptions { RunDirectory = Cluster.HostRunDirectory("host-1") }))
            Vm = await starter.StartVmAsync(new VmSpec(VmId.New(), "crash-vm", [await Pool.ResolveChainAsync(A.Id, Image)]));
        Drive = Vm.Drive(Image);
        Log($"VM {Vm.Id} (QEMU pid {Vm.Pid}) on image {Image}, domains A {A.Id} and B {B.Id}");

        Coordinator = Cluster.StartCoordinator();
        Host1 = Cluster.StartHost("host-1", spm: true);
        Host2 = Cluster.StartHost("host-2", spm: false);
        await WaitForAsync("the Coordinator's API", Api.IsUpAsync, TimeSpan.FromSeconds(30));
        await WaitForAsync("host-1 to report the VM and both domains", async () =>
        {
            var inventory = await Api.GetAsync("/api/inventory");
            return inventory.GetProperty("vms").EnumerateArray().Any(v => v.GetProperty("vm").GetProperty("id").GetString() == Vm.Id.ToString())
                   && inventory.GetProperty("domains").GetArrayLength() == 2;
        }, TimeSpan.FromSeconds(30));
        Log($"cluster up: Coordinator pid {Coordinator.Pid}, host-1 pid {Host1.Pid} (SPM, runs the VM), host-2 pid {Host2.Pid}");
    }

    /// <summary>Starts the guest writing stamped blocks over the first 16 MiB of the disk, through QEMU's NBD export.</summary>
    public async Task StartGuestAsync()
    {
        Guest = new GuestWorkload(new GuestWorkloadOptions(Drive.GuestSocket, Drive.ExportName, Image, 0, 16 * MiB,
            Path.Combine(DataDirectory, "guest.ledger"), RateBytesPerSecond: 512 * 1024, Pattern: WritePattern.Random));
        await Guest.StartAsync();
        await Task.Delay(500);
        Log($"guest writing: {Guest.Stats.Writes} writes so far");
    }

    /// <summary>A pre-copy of the disk to B, throttled so the mirror lasts long enough to crash something during it.</summary>
    public async Task<string> StartSlowPreCopyAsync(long bandwidth = 2 * MiB)
    {
        var id = await Api.StartMigrationAsync(Vm.Id.ToString(), Image.ToString(), B.Id.ToString(), "pre-copy", "write-blocking", bandwidth);
        Log($"migration {id} accepted: pre-copy A → B at {bandwidth / MiB} MiB/s, write-blocking");
        return id;
    }

    public async Task<MigrationSnapshot> GetMigrationAsync(string id)
    {
        var m = await Api.GetAsync($"/api/migrations/{id}");
        var disk = m.GetProperty("disks")[0];
        return new MigrationSnapshot(
            m.GetProperty("status").GetString()!,
            disk.GetProperty("step").ValueKind == JsonValueKind.String ? disk.GetProperty("step").GetString() : null,
            disk.GetProperty("done").GetInt64(),
            disk.GetProperty("total").GetInt64(),
            m.TryGetProperty("error", out var e) && e.ValueKind == JsonValueKind.String ? e.GetString() : null);
    }

    /// <summary>The migration as the API shows it, or null while the API does not answer (its Coordinator is down or starting).</summary>
    public async Task<MigrationSnapshot?> TryGetMigrationAsync(string id)
    {
        try { return await GetMigrationAsync(id); }
        catch (Exception e) when (e is HttpRequestException or TaskCanceledException or ApiException or JsonException) { return null; }
    }

    /// <summary>Polls the migration until it satisfies <paramref name="condition"/>; logs each change; fails with the node logs at the deadline.</summary>
    public async Task<MigrationSnapshot> WaitForMigrationAsync(string id, string what, Func<MigrationSnapshot, bool> condition, TimeSpan limit)
    {
        var deadline = DateTime.UtcNow + limit;
        MigrationSnapshot? last = null;
        while (DateTime.UtcNow < deadline)
        {
            var now = await TryGetMigrationAsync(id);
            if (now is not null)
            {
                if (now != last) Log($"  {now}");
                last = now;
                if (condition(now)) return now;
                if (now.Finished) break;
            }
            await Task.Delay(100);
        }
        throw new Xunit.Sdk.XunitException($"waited {limit.TotalSeconds:0} s for migration {id} to {what}; last seen: {last?.ToString() ?? "no answer"}\n{NodeLogTails()}");
    }

    public async Task WaitForAsync(string what, Func<Task<bool>> condition, TimeSpan limit)
    {
        var deadline = DateTime.UtcNow + limit;
        while (true)
        {
            bool met;
            try { met = await condition(); }
            catch (Exception e) when (e is HttpRequestException or TaskCanceledException or ApiException) { met = false; }
            if (met) return;
            if (DateTime.UtcNow > deadline)
                throw new Xunit.Sdk.XunitException($"waited {limit.TotalSeconds:0} s for {what}\n{NodeLogTails()}");
            await Task.Delay(200);
        }
    }

    /// <summary>Every image on the domain that still holds an ILLEGAL volume is removed and listed: a correct run leaves none.</summary>
    public async Task<IReadOnlyList<VolumeInfo>> LeftoversAsync() =>
        [.. await A.RemoveIllegalLeftoversAsync(new HashSet<ImageId>()), .. await B.RemoveIllegalLeftoversAsync(new HashSet<ImageId>())];

    /// <summary>The last lines of every node's log, for an assertion message.</summary>
    public string NodeLogTails(int lines = 40)
    {
        var text = new StringBuilder();
        var logs = Path.Combine(DataDirectory, "logs");
        if (!Directory.Exists(logs)) return "(no node logs)";
        foreach (var log in Directory.GetFiles(logs, "*.log").Order())
        {
            string[] all;
            try
            {
                using var stream = new FileStream(log, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
                using var reader = new StreamReader(stream);
                all = reader.ReadToEnd().Split('\n');
            }
            catch (IOException e) { all = [$"(cannot read: {e.Message})"]; }
            text.AppendLine($"--- {Path.GetFileName(log)} (last {lines} lines) ---");
            foreach (var line in all.TakeLast(lines)) text.AppendLine(line);
        }
        return text.ToString();
    }

    public void Log(string line) => _output.WriteLine($"[{_clock.Elapsed.TotalSeconds,6:0.00} s] {line}");

    public async ValueTask DisposeAsync()
    {
        try
        {
            if (Guest is not null) await Guest.DisposeAsync();
        }
        catch (Exception e) { Log($"stopping the guest: {e.Message}"); }
        await Cluster.DisposeAsync();
        // The VM outlives host-1 by design (QEMU is daemonized): stop it by its pid file in host-1's run directory.
        try
        {
            await using var stopper = new QmpHypervisor(new QmpHypervisorOptions { RunDirectory = Cluster.HostRunDirectory("host-1") });
            foreach (var running in await stopper.AdoptRunningVmsAsync()) await stopper.StopVmAsync(running.Id);
        }
        catch (Exception e) { Log($"stopping the VM: {e.Message}"); }
        Api.Dispose();
        try { Directory.Delete(DataDirectory, recursive: true); }
        catch (IOException e) { Log($"removing {DataDirectory}: {e.Message}"); }
    }
}
