using LiveMigration.Shared.Processes;

namespace LiveMigration.Cli.Local;

/// <summary>
/// Finds and signals processes by pid through /proc, for processes this process did not start (or no longer
/// holds): a pid alone may have been reused, so a process is "ours" only while its start time still matches.
/// </summary>
public static class ProcessTable
{
    public const int SigTerm = 15;
    public const int SigKill = 9;

    /// <summary>The process's start time in clock ticks since boot (field 22 of /proc/PID/stat), or null when it is gone.</summary>
    public static long? StartTime(int pid) => ProcStat.Read(pid)?.StartTicks;

    /// <summary>The CPU time (user and system) the process has used since it started, or null when it is gone.</summary>
    public static TimeSpan? CpuTime(int pid) => ProcStat.Read(pid)?.CpuTime;

    /// <summary>
    /// True while the pid runs (a zombie counts as gone: it serves nothing) and, when <paramref name="startTime"/>
    /// is given, is the same process as the one recorded then.
    /// </summary>
    public static bool IsAlive(int pid, long? startTime = null) =>
        ProcStat.Read(pid) is { IsZombie: false } stat && (startTime is null || stat.StartTicks == startTime);

    /// <summary>The process's arguments (/proc/PID/cmdline), empty when it is gone.</summary>
    public static IReadOnlyList<string> CommandLine(int pid)
    {
        try { return File.ReadAllText($"/proc/{pid}/cmdline").Split('\0', StringSplitOptions.RemoveEmptyEntries); }
        catch (IOException) { return []; }
        catch (UnauthorizedAccessException) { return []; }
    }

    /// <summary>Sends a signal; false when the process is already gone.</summary>
    public static bool Signal(int pid, int signal) => ProcessSignals.Send(pid, signal);

    /// <summary>Waits until every process is gone or the time is up; returns the ones still running.</summary>
    public static async Task<IReadOnlyList<T>> WaitGoneAsync<T>(IReadOnlyList<T> processes, Func<T, bool> alive, TimeSpan limit, CancellationToken ct = default)
    {
        var deadline = DateTime.UtcNow + limit;
        var left = processes.Where(alive).ToList();
        while (left.Count > 0 && DateTime.UtcNow < deadline)
        {
            await Task.Delay(100, ct);
            left = left.Where(alive).ToList();
        }
        return left;
    }

    /// <summary>
    /// True while /proc still lists the pid as that process, zombie included. A node that is not our child is
    /// reaped by init once it exits; until then it is dead but still listed.
    /// </summary>
    public static bool IsListed(int pid, long? startTime = null) =>
        ProcStat.Read(pid) is { } stat && (startTime is null || stat.StartTicks == startTime);

    /// <summary>The real user id a process runs as (the Uid line of /proc/PID/status), or null when it is gone.</summary>
    public static int? OwnerUid(int pid)
    {
        try
        {
            var line = File.ReadLines($"/proc/{pid}/status").FirstOrDefault(l => l.StartsWith("Uid:", StringComparison.Ordinal));
            return line?.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries) is [_, var real, ..] && int.TryParse(real, out var uid) ? uid : null;
        }
        catch (IOException) { return null; }
        catch (UnauthorizedAccessException) { return null; }
    }

    /// <summary>This process's own user id.</summary>
    public static int? OwnUid => OwnerUid(Environment.ProcessId);
}
