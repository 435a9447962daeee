using System.Diagnostics;
using System.Net.Sockets;
using System.Text;
using LiveMigration.HostNode.Guest;
using LiveMigration.HostNode.Processes;
using LiveMigration.Shared.Model;

namespace LiveMigration.HostNode.Tests.Guest;

/// <summary>
/// A qcow2 image in a temporary folder and a qemu-nbd serving it on a short unix socket path, started and
/// killed by pid: the stand-in for a VM's drive export in the guest tests.
/// </summary>
internal sealed class QemuNbdTestBed : IAsyncDisposable
{
    public const string ExportName = "drive0";

    private Process? _nbd;
    private readonly StringBuilder _nbdLog = new();

    private QemuNbdTestBed(string folder, string socketFolder, long size)
    {
        Folder = folder;
        SocketFolder = socketFolder;
        Size = size;
        ImagePath = Path.Combine(folder, "disk.qcow2");
        LedgerPath = Path.Combine(folder, "ledger.txt");
        SocketPath = Path.Combine(socketFolder, "nbd.sock");
    }

    public string Folder { get; }
    public string SocketFolder { get; }
    public string ImagePath { get; }
    public string LedgerPath { get; }
    public string SocketPath { get; }
    public long Size { get; }
    public ImageId Drive { get; } = ImageId.New();
    public int? NbdPid => _nbd?.Id;

    public static async Task<QemuNbdTestBed> CreateAsync(long size = 16 << 20)
    {
        var folder = Path.Combine(Path.GetTempPath(), $"lsm-guest-{Guid.NewGuid():N}");
        // Unix socket paths are limited to ~108 bytes: keep the socket under a short /tmp folder.
        var socketFolder = $"/tmp/lsm-{Guid.NewGuid().ToString("N")[..8]}";
        Directory.CreateDirectory(folder);
        Directory.CreateDirectory(socketFolder);
        var bed = new QemuNbdTestBed(folder, socketFolder, size);
        await ProcessRunner.RunCheckedAsync("qemu-img", ["create", "-q", "-f", "qcow2", bed.ImagePath, size.ToString()],
            ErrorCodes.QemuImgFailed);
        return bed;
    }

    /// <summary>Workload options aimed at this bed's export and ledger.</summary>
    public GuestWorkloadOptions WorkloadOptions(long offset, long length, long rateBytesPerSecond = 0,
        WritePattern pattern = WritePattern.Sequential) =>
        new(SocketPath, ExportName, Drive, offset, length, LedgerPath,
            RateBytesPerSecond: rateBytesPerSecond, Pattern: pattern, RequestTimeout: TimeSpan.FromSeconds(10));

    /// <summary>Starts qemu-nbd (persistent, up to 4 clients at once) and waits until its socket accepts connections.</summary>
    public async Task StartNbdAsync()
    {
        if (_nbd is not null)
            throw new InvalidOperationException("qemu-nbd is running already");
        if (File.Exists(SocketPath))
            File.Delete(SocketPath);
        var psi = new ProcessStartInfo("qemu-nbd")
        {
            RedirectStandardError = true,
            RedirectStandardOutput = true,
            UseShellExecute = false,
        };
        foreach (var a in new[] { "-k", SocketPath, "-x", ExportName, "-f", "qcow2", "-t", "-e", "4", ImagePath })
            psi.ArgumentList.Add(a);
        var process = Process.Start(psi) ?? throw new InvalidOperationException("qemu-nbd did not start");
        process.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (_nbdLog) _nbdLog.AppendLine(e.Data); };
        process.OutputDataReceived += (_, e) => { if (e.Data is not null) lock (_nbdLog) _nbdLog.AppendLine(e.Data); };
        process.BeginErrorReadLine();
        process.BeginOutputReadLine();
        _nbd = process;

        var deadline = Stopwatch.StartNew();
        while (deadline.Elapsed < TimeSpan.FromSeconds(10))
        {
            if (process.HasExited)
                throw new InvalidOperationException($"qemu-nbd exited with {process.ExitCode}: {NbdLog}");
            if (File.Exists(SocketPath))
            {
                using var probe = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
                try
                {
                    await probe.ConnectAsync(new UnixDomainSocketEndPoint(SocketPath));
                    return;
                }
                catch (SocketException)
                {
                    // bound but not listening yet
                }
            }
            await Task.Delay(20);
        }
        throw new TimeoutException($"qemu-nbd did not listen on {SocketPath} within 10 s: {NbdLog}");
    }

    public string NbdLog { get { lock (_nbdLog) return _nbdLog.ToString(); } }

    /// <summary>SIGKILLs qemu-nbd by its pid and waits for it to be gone (its image lock goes with it).</summary>
    public async Task KillNbdAsync()
    {
        if (_nbd is not { } process)
            return;
        _nbd = null;
        try { process.Kill(); } catch (InvalidOperationException) { }
        await process.WaitForExitAsync();
        process.Dispose();
    }

    public Task QemuIoAsync(string command) =>
        ProcessRunner.RunCheckedAsync("qemu-io", ["-f", "qcow2", "-c", command, ImagePath], ErrorCodes.QemuImgFailed);

    public async ValueTask DisposeAsync()
    {
        await KillNbdAsync();
        try { Directory.Delete(Folder, recursive: true); } catch (IOException) { }
        try { Directory.Delete(SocketFolder, recursive: true); } catch (IOException) { }
    }
}
