using System.Diagnostics;
using LiveMigration.HostNode.Storage;

namespace LiveMigration.HostNode.Processes;

/// <summary>
/// Holds a running copy process (qemu-img) to a write rate that may change while it runs: it counts what the process
/// wrote (<c>/proc/PID/io</c>, <c>wchar</c>: every byte its threads passed to write calls) against a token bucket filled
/// at the throttle's rate, pauses the process (SIGSTOP) when it is ahead and resumes it (SIGCONT) once the bucket caught
/// up. qemu-img's own <c>-r</c> is fixed at its start; this follows <see cref="CopyThrottle"/> at every tick. A paused
/// process holds its files as a slow one would, and SIGKILL (a cancelled copy) ends it paused or not.
/// </summary>
public static class ProcessPacer
{
    private static readonly TimeSpan Tick = TimeSpan.FromMilliseconds(20);

    /// <summary>The most a process may get ahead after idling: a quarter second at the rate (enough to keep its pipeline busy).</summary>
    private static readonly TimeSpan Burst = TimeSpan.FromMilliseconds(250);

    /// <summary>Paces <paramref name="pid"/> until <paramref name="stop"/> fires or the process is gone; leaves it running.</summary>
    public static async Task PaceAsync(int pid, CopyThrottle throttle, CancellationToken stop)
    {
        var paused = false;
        double bucket = 0;
        var lastWritten = WrittenBytes(pid) ?? 0;
        var last = Stopwatch.GetTimestamp();
        try
        {
            while (true)
            {
                await Task.Delay(Tick, stop);
                if (WrittenBytes(pid) is not { } written) return; // exited
                var now = Stopwatch.GetTimestamp();
                var seconds = Stopwatch.GetElapsedTime(last, now).TotalSeconds;
                last = now;
                var rate = throttle.BytesPerSecond;
                var wrote = written - lastWritten;
                lastWritten = written;
                if (rate == 0)
                {
                    bucket = 0;
                    if (paused) paused = !Resume(pid);
                    continue;
                }
                bucket = Math.Min(bucket + rate * seconds, rate * Burst.TotalSeconds) - wrote;
                if (bucket < 0 && !paused) paused = Pause(pid);
                else if (bucket >= 0 && paused) paused = !Resume(pid);
            }
        }
        catch (OperationCanceledException)
        {
            // the copy ended or was cancelled
        }
        finally
        {
            if (paused) Resume(pid);
        }
    }

    /// <summary>The bytes the process wrote so far, or null when it is gone.</summary>
    private static long? WrittenBytes(int pid)
    {
        try
        {
            foreach (var line in File.ReadLines($"/proc/{pid}/io"))
                if (line.StartsWith("wchar:", StringComparison.Ordinal))
                    return long.Parse(line.AsSpan(6).Trim());
            return null;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException)
        {
            return null;
        }
    }

    private static bool Pause(int pid) => Signal(pid, 19 /* SIGSTOP */);

    private static bool Resume(int pid) => Signal(pid, 18 /* SIGCONT */);

    private static bool Signal(int pid, int signal) => Posix.Kill(pid, signal) == 0;

    private static class Posix
    {
        [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "kill", SetLastError = true)]
        public static extern int Kill(int pid, int signal);
    }
}
