using System.Diagnostics;
using LiveMigration.Cli.Local;

namespace LiveMigration.Demo.Bench;

/// <summary>What the control-plane benches read beside the API: a process's memory, a call's time, the nodes' logs.</summary>
internal static class BenchProbes
{
    /// <summary>The resident memory of a process, from /proc (0 when it is gone).</summary>
    public static long RssBytes(int pid)
    {
        try
        {
            var line = File.ReadLines($"/proc/{pid}/status").FirstOrDefault(l => l.StartsWith("VmRSS:"));
            return line is null ? 0 : long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1]) * 1024;
        }
        catch (IOException) { return 0; }
    }

    /// <summary>
    /// The CPU seconds a process has used since it started (0 when it is gone). Beside a wall time it says whether a phase
    /// waited or computed: on this 2-core machine 2 s of CPU in 1 s of wall is all the machine had.
    /// </summary>
    public static double CpuSeconds(int pid) => ProcessTable.CpuTime(pid)?.TotalSeconds ?? 0;

    public static async Task<double> TimeAsync(Func<Task> call)
    {
        var watch = Stopwatch.StartNew();
        await call();
        return watch.Elapsed.TotalMilliseconds;
    }

    /// <summary>Copies a local cluster's logs to var/bench/<paramref name="name"/> (its data directory goes); returns where, or null when it had none.</summary>
    public static string? KeepLogs(string dataDir, string name)
    {
        var from = Path.Combine(dataDir, "logs");
        if (!Directory.Exists(from)) return null;
        var to = Path.GetFullPath(Path.Combine("var", "bench", name));
        Directory.CreateDirectory(to);
        foreach (var log in Directory.EnumerateFiles(from))
            File.Copy(log, Path.Combine(to, Path.GetFileName(log)), overwrite: true);
        return to;
    }
}
