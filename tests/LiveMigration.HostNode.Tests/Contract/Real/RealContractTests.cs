using System.Diagnostics;
using LiveMigration.HostNode.Hypervisor;
using LiveMigration.HostNode.Hypervisor.Qmp;
using LiveMigration.HostNode.Processes;
using LiveMigration.HostNode.Storage;
using LiveMigration.HostNode.Storage.File;
using LiveMigration.Shared.Model;

namespace LiveMigration.HostNode.Tests.Contract.Real;

/// <summary>Writing data into a file volume is what a guest does: qemu-io on that one layer.</summary>
internal static class FileLayerData
{
    public static async Task WriteAsync(IStorageDomain domain, ImageId image, VolumeId volume, long offset, long length, byte pattern)
    {
        var format = (await domain.DescribeVolumeAsync(image, volume)).Format == VolumeFormat.Cow ? "qcow2" : "raw";
        await ProcessRunner.RunCheckedAsync("qemu-io",
            ["-f", format, "-c", $"write -P 0x{pattern:x2} {offset} {length}", domain.Locate(image, volume)],
            ErrorCodes.IoError);
    }

    /// <summary>A short root under /tmp: the QMP run directory below it holds unix sockets.</summary>
    public static string NewShortRoot() => Path.Combine("/tmp", $"lsm-{Guid.NewGuid():N}"[..12]);

    public static void DeleteRoot(string root)
    {
        FileStorageDomain.RemovalsFinishedAsync().Wait(TimeSpan.FromSeconds(30)); // a delete's unlinks end before the folder goes
        if (Directory.Exists(root)) Directory.Delete(root, recursive: true);
    }
}

public sealed class FileStorageDomainContractTests : StorageDomainContract
{
    private readonly string _root = Path.Combine(Path.GetTempPath(), $"lsm-contract-sd-{Guid.NewGuid():N}");

    public override Task InitializeAsync()
    {
        Directory.CreateDirectory(_root);
        return base.InitializeAsync();
    }

    protected override async Task<IStorageDomain> CreateDomainAsync(string name, long capacityBytes) =>
        await FileStorageDomain.CreateAsync(_root, DomainId.New(), name, capacityBytes);

    protected override Task WriteLayerDataAsync(IStorageDomain domain, ImageId image, VolumeId volume, long offset, long length, byte pattern) =>
        FileLayerData.WriteAsync(domain, image, volume, offset, length, pattern);

    protected override Task<IAsyncDisposable> HoldOpenAsync(IStorageDomain domain, ImageId image, VolumeId volume) =>
        QemuNbdHold.StartAsync(domain.Locate(image, volume));

    public override async Task DisposeAsync()
    {
        await base.DisposeAsync();
        FileLayerData.DeleteRoot(_root);
    }
}

/// <summary>
/// A volume held open as a running QEMU holds it: <c>qemu-nbd -r</c> opens it (and its backing chain) through QEMU's
/// block layer, which takes the same OFD image locks. Killed by its pid on dispose.
/// </summary>
public sealed class QemuNbdHold : IAsyncDisposable
{
    private readonly Process _process;
    private readonly string _socket;

    private QemuNbdHold(Process process, string socket) => (_process, _socket) = (process, socket);

    public static async Task<IAsyncDisposable> StartAsync(string path)
    {
        var socket = Path.Combine("/tmp", $"lsm-nbd-{Guid.NewGuid():N}"[..16] + ".sock");
        var start = new ProcessStartInfo("qemu-nbd") { RedirectStandardError = true, RedirectStandardOutput = true };
        foreach (var a in new[] { "-r", "-f", "qcow2", "--persistent", "-k", socket, path }) start.ArgumentList.Add(a);
        var process = Process.Start(start) ?? throw new InvalidOperationException("qemu-nbd did not start");
        var hold = new QemuNbdHold(process, socket);
        // qemu-nbd may listen before it opens the image: held means QEMU's image lock is visible, as the storage
        // domain's own probe sees it (under load the socket came first and a delete found nothing open).
        var watch = Stopwatch.StartNew();
        while (!System.IO.File.Exists(socket) || Posix.LockHolder(path) is null)
        {
            if (process.HasExited)
                throw new InvalidOperationException($"qemu-nbd exited with {process.ExitCode}: {await process.StandardError.ReadToEndAsync()}");
            if (watch.Elapsed > TimeSpan.FromSeconds(10))
            {
                await hold.DisposeAsync();
                throw new TimeoutException($"qemu-nbd did not open {path} within 10 s");
            }
            await Task.Delay(20);
        }
        return hold;
    }

    public async ValueTask DisposeAsync()
    {
        try
        {
            if (!_process.HasExited) _process.Kill();
            await _process.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(10));
        }
        finally
        {
            _process.Dispose();
            File.Delete(_socket);
        }
    }
}

public sealed class QmpHypervisorContractTests : HypervisorContract
{
    private readonly string _root = FileLayerData.NewShortRoot();
    private readonly List<QmpHypervisor> _instances = new();

    private string RunDirectory => Path.Combine(_root, "run");

    protected override async Task<(IStorageDomain Source, IStorageDomain Destination)> CreateDomainsAsync()
    {
        Directory.CreateDirectory(_root);
        var domains = Path.Combine(_root, "sd");
        return (await FileStorageDomain.CreateAsync(domains, DomainId.New(), "file-a", 1L << 30),
                await FileStorageDomain.CreateAsync(domains, DomainId.New(), "file-b", 1L << 30));
    }

    protected override Task WriteLayerDataAsync(IStorageDomain domain, ImageId image, VolumeId volume, long offset, long length, byte pattern) =>
        FileLayerData.WriteAsync(domain, image, volume, offset, length, pattern);

    protected override IHypervisor CreateHypervisor(StoragePool pool)
    {
        var hypervisor = new QmpHypervisor(new QmpHypervisorOptions { RunDirectory = RunDirectory, CommandTimeout = TimeSpan.FromSeconds(20) });
        _instances.Add(hypervisor);
        return hypervisor;
    }

    protected override Task KillVmProcessAsync(VmInfo vm)
    {
        var pid = vm.Pid ?? throw new InvalidOperationException($"VM {vm.Id} has no pid to kill");
        return KillAsync(pid);
    }

    /// <summary>SIGKILL (what Process.Kill sends on Unix), then waits until the pid is gone or a zombie: QEMU was daemonized, so it is not our child.</summary>
    private static async Task KillAsync(int pid)
    {
        try
        {
            using var process = Process.GetProcessById(pid);
            process.Kill();
        }
        catch (ArgumentException) { return; }
        catch (InvalidOperationException) { return; }
        var deadline = DateTime.UtcNow.AddSeconds(10);
        while (IsRunning(pid))
        {
            if (DateTime.UtcNow > deadline) throw new TimeoutException($"QEMU pid {pid} still runs 10 s after SIGKILL");
            await Task.Delay(20);
        }
    }

    private static bool IsRunning(int pid) => LiveMigration.Shared.Processes.ProcStat.Read(pid) is { IsZombie: false };

    /// <summary>Only a QEMU whose command line names our run directory is ours (a pid may have been reused).</summary>
    private bool IsOurQemu(int pid)
    {
        try { return File.ReadAllText($"/proc/{pid}/cmdline").Contains(_root, StringComparison.Ordinal); }
        catch (IOException) { return false; }
    }

    public override async Task DisposeAsync()
    {
        await base.DisposeAsync();
        // Every QEMU this host started is named by a pid file in the run directory (the manifest's pid).
        var vms = Path.Combine(RunDirectory, "vms");
        if (Directory.Exists(vms))
        {
            foreach (var pidFile in Directory.EnumerateFiles(vms, "*.pid"))
            {
                if (int.TryParse((await File.ReadAllTextAsync(pidFile)).Trim(), out var pid) && IsOurQemu(pid))
                    await KillAsync(pid);
            }
        }
        FileLayerData.DeleteRoot(_root);
    }
}
