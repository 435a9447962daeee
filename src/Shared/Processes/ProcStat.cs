using System.Globalization;
using System.Runtime.InteropServices;

namespace LiveMigration.Shared.Processes;

/// <summary>
/// What /proc/PID/stat says of a process (proc(5)), read in one place for every part that looks at processes it did not
/// start or no longer holds: the CLI's node table, the SPM lease's holder, orphaned copies, QEMU processes.
/// </summary>
/// <param name="State">R, S, D, T, Z (zombie), X (dead), …</param>
/// <param name="UserTicks">utime, in USER_HZ ticks (100 a second on every Linux the runtime supports).</param>
/// <param name="StartTicks">The start time in clock ticks after boot: with the pid, what tells one process from a later one that reused its pid.</param>
public sealed record ProcStat(int Pid, char State, int ParentPid, long UserTicks, long SystemTicks, long StartTicks)
{
    /// <summary>Exited and not yet reaped (or being reaped): it serves nothing, though /proc still lists it.</summary>
    public bool IsZombie => State is 'Z' or 'X' or 'x';

    /// <summary>The CPU time (user and system) used since it started.</summary>
    public TimeSpan CpuTime => TimeSpan.FromSeconds((UserTicks + SystemTicks) / 100.0);

    /// <summary>The process <paramref name="pid"/> as <paramref name="procRoot"/> shows it, or null when it is gone or cannot be read.</summary>
    public static ProcStat? Read(int pid, string procRoot = "/proc")
    {
        if (pid <= 0) return null;
        try
        {
            return Parse(File.ReadAllText($"{procRoot}/{pid.ToString(CultureInfo.InvariantCulture)}/stat"));
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    /// <summary>One stat line ("pid (comm) state ppid …"), or null when it is not one. The command name may hold spaces and
    /// parentheses, so the fields are counted from the last ')'.</summary>
    public static ProcStat? Parse(string line)
    {
        var open = line.IndexOf(" (", StringComparison.Ordinal);
        var close = line.LastIndexOf(')');
        if (open <= 0 || close < open || close + 2 >= line.Length) return null;
        var fields = line[(close + 2)..].Split(' ', StringSplitOptions.RemoveEmptyEntries);
        // fields[0] is the state (field 3 of proc(5)): field N is fields[N - 3]
        if (fields.Length < 20 || fields[0].Length != 1) return null;
        return int.TryParse(line[..open], NumberStyles.None, CultureInfo.InvariantCulture, out var pid)
               && int.TryParse(fields[1], NumberStyles.None, CultureInfo.InvariantCulture, out var parent)
               && long.TryParse(fields[11], NumberStyles.None, CultureInfo.InvariantCulture, out var user)
               && long.TryParse(fields[12], NumberStyles.None, CultureInfo.InvariantCulture, out var system)
               && long.TryParse(fields[19], NumberStyles.None, CultureInfo.InvariantCulture, out var start)
            ? new ProcStat(pid, fields[0][0], parent, user, system, start)
            : null;
    }
}

/// <summary>Signals to processes by pid (kill(2)).</summary>
public static class ProcessSignals
{
    private const int NoSuchProcess = 3; // ESRCH

    /// <summary>Sends <paramref name="signal"/>; false when it could not (the process is gone, or not ours to signal).</summary>
    public static bool Send(int pid, int signal) => pid > 0 && Kill(pid, signal) == 0;

    /// <summary>
    /// True only when the kernel says no process has this pid (kill(pid, 0) fails with ESRCH, which no /proc mount option
    /// hides); a process this one may not signal, or any other error, is not proven gone.
    /// </summary>
    public static bool IsProvablyGone(int pid) => pid > 0 && Kill(pid, 0) != 0 && Marshal.GetLastPInvokeError() == NoSuchProcess;

    [DllImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static extern int Kill(int pid, int signal);
}
