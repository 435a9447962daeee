using System.Collections.Concurrent;
using System.Diagnostics;
using LiveMigration.HostNode.Hypervisor.Qmp;
using LiveMigration.HostNode.Processes;
using LiveMigration.Shared.Model;

namespace LiveMigration.HostNode.Tests.Hypervisor.Qmp;

/// <summary>
/// A scratch area for the QMP tests: two folders laid out like file domains, a run directory deep
/// enough to need the short socket directory, and every QEMU started here killed by pid at the end.
/// </summary>
public sealed class QemuTestBed : IAsyncDisposable
{
    public const long MiB = 1024 * 1024;
    private readonly ConcurrentBag<int> _pids = new();
    private readonly List<QmpHypervisor> _hypervisors = new();

    public QemuTestBed()
    {
        Root = Path.Combine(Path.GetTempPath(), "lsm-qmp-tests-" + Guid.NewGuid().ToString("N"), "a-deliberately-deep-folder");
        Directory.CreateDirectory(Root);
        DomainA = DomainId.New();
        DomainB = DomainId.New();
    }

    public string Root { get; }
    public string RunDirectory => Path.Combine(Root, "run");
    public DomainId DomainA { get; }
    public DomainId DomainB { get; }
    public ConcurrentQueue<HypervisorEvent> Events { get; } = new();

    public QmpHypervisor NewHypervisor(QemuAccount? qemuAccount = null)
    {
        var hypervisor = new QmpHypervisor(new QmpHypervisorOptions
            { RunDirectory = RunDirectory, CommandTimeout = TimeSpan.FromSeconds(20), QemuAccount = qemuAccount });
        hypervisor.EventRaised += e => Events.Enqueue(e);
        lock (_hypervisors) _hypervisors.Add(hypervisor);
        return hypervisor;
    }

    public string ImageFolder(DomainId domain, ImageId image)
    {
        var folder = Path.Combine(Root, domain.ToString(), "images", image.ToString());
        Directory.CreateDirectory(folder);
        return folder;
    }

    public ChainLayer Layer(DomainId domain, ImageId image, VolumeId volume, VolumeFormat format = VolumeFormat.Cow) =>
        new(new VolumeRef(domain, volume), Path.Combine(ImageFolder(domain, image), volume.ToString()), format);

    /// <summary>
    /// A chain on domain A: a raw base filled with 0x11 in its first MiB, then qcow2 layers each writing
    /// 1 MiB of its own pattern (0x22, 0x33…) one MiB further, backing files named relatively as VDSM does.
    /// The leaf also gets <paramref name="leafDataMiB"/> MiB of 0x5a from 8 MiB on.
    /// </summary>
    public async Task<DriveChain> CreateChainAsync(int layers, long capacity, long leafDataMiB = 0)
    {
        var image = ImageId.New();
        var chain = new List<ChainLayer>();
        for (var i = 0; i < layers; i++)
        {
            var layer = Layer(DomainA, image, VolumeId.New(), i == 0 ? VolumeFormat.Raw : VolumeFormat.Cow);
            if (i == 0)
                await QemuImg("create", "-f", "raw", layer.Path, capacity.ToString());
            else
                await QemuImg("create", "-f", "qcow2", "-b", chain[^1].Volume.Volume.ToString(),
                    "-F", chain[^1].Format == VolumeFormat.Raw ? "raw" : "qcow2", layer.Path, capacity.ToString());
            await QemuIo(layer, $"write -P 0x{0x11 * (i + 1):x2} {i * MiB} {MiB}");
            chain.Add(layer);
        }
        if (leafDataMiB > 0) await QemuIo(chain[^1], $"write -P 0x5a {8 * MiB} {leafDataMiB * MiB}");
        return new DriveChain(image, chain);
    }

    /// <summary>What the SPM would have made on B: copies of the internal layers (cp keeps the relative backing names).</summary>
    public async Task<IReadOnlyList<ChainLayer>> CopyBackingToAsync(DomainId domain, DriveChain chain)
    {
        var copies = new List<ChainLayer>();
        foreach (var layer in chain.Backing)
        {
            var copy = Layer(domain, chain.Image, layer.Volume.Volume, layer.Format);
            File.Copy(layer.Path, copy.Path, overwrite: true);
            copies.Add(copy);
        }
        // The header already names the parent relatively; rebase -u states it explicitly as the SPM would.
        for (var i = 1; i < copies.Count; i++)
            await QemuImg("rebase", "-u", "-b", copies[i - 1].Volume.Volume.ToString(),
                "-F", copies[i - 1].Format == VolumeFormat.Raw ? "raw" : "qcow2", copies[i].Path);
        return copies;
    }

    /// <summary>An empty qcow2 leaf on <paramref name="domain"/> whose header names <paramref name="backing"/>.</summary>
    public async Task<ChainLayer> CreateLeafAsync(DomainId domain, ImageId image, VolumeId volume, ChainLayer backing, long capacity)
    {
        var leaf = Layer(domain, image, volume);
        var backingName = Path.GetDirectoryName(backing.Path) == Path.GetDirectoryName(leaf.Path) ? backing.Volume.Volume.ToString() : backing.Path;
        await QemuImg("create", "-f", "qcow2", "-b", backingName, "-F", backing.Format == VolumeFormat.Raw ? "raw" : "qcow2",
            leaf.Path, capacity.ToString());
        return leaf;
    }

    public void Track(VmInfo vm)
    {
        if (vm.Pid is { } pid) _pids.Add(pid);
    }

    public static Task<string> QemuImg(params string[] arguments) =>
        ProcessRunner.RunCheckedAsync("qemu-img", arguments, ErrorCodes.QemuImgFailed);

    /// <summary>Runs qemu-io on a file with its chain (-U: a running QEMU may hold it).</summary>
    public static Task<string> QemuIo(ChainLayer layer, string command, bool shared = false)
    {
        var args = new List<string> { "-f", layer.Format == VolumeFormat.Raw ? "raw" : "qcow2" };
        if (shared) args.Add("-U");
        args.AddRange(["-c", command, layer.Path]);
        return ProcessRunner.RunCheckedAsync("qemu-io", args, ErrorCodes.QemuImgFailed);
    }

    /// <summary>Writes through the drive's NBD export, the way the guest does.</summary>
    public static Task<string> GuestIo(DriveState drive, string command) =>
        ProcessRunner.RunCheckedAsync("qemu-io",
            ["-f", "raw", "-c", command, $"nbd+unix:///{drive.ExportName}?socket={drive.GuestSocket}"], ErrorCodes.QemuImgFailed);

    public static IReadOnlyList<string> OpenFiles(int pid) =>
        Directory.EnumerateFileSystemEntries($"/proc/{pid}/fd")
            .Select(fd => { try { return new FileInfo(fd).LinkTarget ?? ""; } catch (IOException) { return ""; } })
            .Where(target => target.Length > 0)
            .ToList();

    public async Task<T> WaitForEventAsync<T>(Func<T, bool> match, TimeSpan timeout) where T : HypervisorEvent
    {
        var watch = Stopwatch.StartNew();
        while (watch.Elapsed < timeout)
        {
            if (Events.OfType<T>().FirstOrDefault(match) is { } found) return found;
            await Task.Delay(10);
        }
        throw new TimeoutException($"no {typeof(T).Name} within {timeout.TotalSeconds} s; saw: {string.Join(", ", Events)}");
    }

    /// <summary>SIGKILLs the pid and waits until it is gone (or a zombie: its parent may not reap it).</summary>
    public static async Task KillAsync(int pid)
    {
        try
        {
            using var process = Process.GetProcessById(pid);
            process.Kill();
        }
        catch (ArgumentException) { return; }
        catch (InvalidOperationException) { return; }
        var watch = Stopwatch.StartNew();
        while (IsRunning(pid) && watch.Elapsed < TimeSpan.FromSeconds(5)) await Task.Delay(20);
    }

    public static bool IsRunning(int pid) => LiveMigration.Shared.Processes.ProcStat.Read(pid) is { IsZombie: false };

    public async ValueTask DisposeAsync()
    {
        List<QmpHypervisor> hypervisors;
        lock (_hypervisors) hypervisors = _hypervisors.ToList();
        foreach (var hypervisor in hypervisors) await hypervisor.DisposeAsync();
        foreach (var pid in _pids) await KillAsync(pid);
        var socketDirectory = hypervisors.FirstOrDefault()?.SocketDirectory;
        if (socketDirectory is not null && socketDirectory.StartsWith(LiveMigration.HostNode.Hypervisor.SocketDirectory.SharedParent + "/", StringComparison.Ordinal) && Directory.Exists(socketDirectory))
            Directory.Delete(socketDirectory, recursive: true);
        await LiveMigration.HostNode.Storage.File.FileStorageDomain.RemovalsFinishedAsync().WaitAsync(TimeSpan.FromSeconds(30)); // a delete's unlinks end before the folder goes
        Directory.Delete(Path.GetDirectoryName(Root)!, recursive: true);
    }
}
