using System.Diagnostics;
using LiveMigration.HostNode.Processes;
using LiveMigration.Shared.Model;
using LiveMigration.Shared.Processes;

namespace LiveMigration.HostNode.Hypervisor.Qmp;

/// <summary>Starts, finds and ends QEMU processes that are not children we keep (they must outlive the host).</summary>
internal static class QemuProcess
{
    /// <summary>
    /// Starts QEMU with <c>-daemonize</c>: it forks, calls setsid, and its parent exits once the monitor
    /// listens, so the VM survives the host and we know when QMP is ready. The daemon points its stdio at
    /// /dev/null before its parent exits, so the pipe we read the start-up errors from is not held afterwards.
    /// </summary>
    public static async Task<int> StartDaemonAsync(string qemuBinary, IReadOnlyList<string> arguments, string pidFile,
        string logFile, QemuAccount? account, CancellationToken ct)
    {
        File.Delete(pidFile);
        IEnumerable<string> daemonArguments = [.. arguments, "-daemonize", "-pidfile", pidFile];
        var (program, programArguments) = account is null ? (qemuBinary, daemonArguments) : account.Wrap(qemuBinary, daemonArguments);
        var result = await ProcessRunner.RunAsync(program, programArguments, ct);
        var output = (result.StandardError + result.StandardOutput).Trim();
        await File.AppendAllTextAsync(logFile,
            $"{DateTimeOffset.UtcNow:O} {qemuBinary} {string.Join(' ', arguments)}\n{(output.Length > 0 ? output + "\n" : "")}", ct);
        if (!result.Succeeded)
            throw new OperationFailedException(ErrorCodes.IoError, $"{qemuBinary} failed to start (exit {result.ExitCode}): {output}");
        var text = await File.ReadAllTextAsync(pidFile, ct);
        return int.TryParse(text.Trim(), out var pid)
            ? pid
            : throw new OperationFailedException(ErrorCodes.IoError, $"{qemuBinary} wrote no pid into {pidFile}: '{text.Trim()}'");
    }

    /// <summary>
    /// True when the pid runs and its command line names <paramref name="qmpSocket"/> (so a recycled pid is
    /// not mistaken for our VM). A zombie counts as dead: it no longer serves anything.
    /// </summary>
    public static bool IsAlive(int pid, string qmpSocket)
    {
        try
        {
            if (ProcStat.Read(pid) is not { IsZombie: false }) return false;
            var commandLine = File.ReadAllText($"/proc/{pid}/cmdline");
            return commandLine.Contains(qmpSocket, StringComparison.Ordinal);
        }
        catch (IOException) { return false; }
        catch (UnauthorizedAccessException) { return false; }
    }

    /// <summary>Waits up to <paramref name="grace"/> for the process to go, then SIGKILLs it.</summary>
    public static async Task EnsureGoneAsync(int pid, string qmpSocket, TimeSpan grace, CancellationToken ct)
    {
        var deadline = DateTime.UtcNow + grace;
        while (IsAlive(pid, qmpSocket) && DateTime.UtcNow < deadline)
            await Task.Delay(50, ct);
        if (!IsAlive(pid, qmpSocket)) return;
        try
        {
            using var process = Process.GetProcessById(pid);
            process.Kill();
        }
        catch (ArgumentException) { return; }
        catch (InvalidOperationException) { return; }
        deadline = DateTime.UtcNow + TimeSpan.FromSeconds(5);
        while (IsAlive(pid, qmpSocket) && DateTime.UtcNow < deadline)
            await Task.Delay(20, ct);
    }
}
