using System.Diagnostics;
using LiveMigration.Shared.Processes;

namespace LiveMigration.HostNode.Processes;

/// <summary>
/// The <c>qemu-img convert</c> processes an SPM that died left running. Nothing waits for them any more, yet they go on
/// writing their twin — at the copy's speed limit, which can be minutes — and hold its lock, so every retry of that copy
/// would fail until they end. A new SPM on this host kills them before it copies anything: an orphan (its parent gone,
/// so re-parented to init) whose arguments name a file under one of the pool's domains. A convert that a live process
/// waits for (another host's SPM on this machine, a test, an operator's own) has a parent and is never touched.
/// </summary>
public static class OrphanCopies
{
    /// <summary>Kills the orphaned copies into or out of <paramref name="domainRoots"/>; returns what it killed, for the log.</summary>
    public static IReadOnlyList<string> Kill(IReadOnlyCollection<string> domainRoots)
    {
        var killed = new List<string>();
        foreach (var (stat, args) in CopiesUnder(domainRoots).Where(c => c.Process.ParentPid == 1))
        {
            try
            {
                using var process = Process.GetProcessById(stat.Pid);
                process.Kill();
                // reaped by init; wait until it is gone, so its lock on the twin is gone too
                process.WaitForExit(TimeSpan.FromSeconds(10));
                killed.Add($"{stat.Pid}: {string.Join(' ', args)}");
            }
            catch (Exception e) when (e is ArgumentException or InvalidOperationException or System.ComponentModel.Win32Exception)
            {
                // gone meanwhile, or not ours to kill
            }
        }
        return killed;
    }

    /// <summary>The running (not zombie) <c>qemu-img convert</c> processes whose arguments name a file under one of <paramref name="domainRoots"/>.</summary>
    public static IEnumerable<(ProcStat Process, IReadOnlyList<string> Arguments)> CopiesUnder(IReadOnlyCollection<string> domainRoots)
    {
        if (domainRoots.Count == 0 || !Directory.Exists("/proc")) yield break;
        var roots = domainRoots.Select(r => Path.TrimEndingDirectorySeparator(Path.GetFullPath(r)) + "/").ToList();
        foreach (var dir in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(dir), out var pid)) continue;
            string[] args;
            try
            {
                args = File.ReadAllText(Path.Combine(dir, "cmdline")).Split('\0', StringSplitOptions.RemoveEmptyEntries);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                continue; // gone meanwhile, or not ours to read
            }
            if (args.Length < 2 || Path.GetFileName(args[0]) != "qemu-img" || args[1] != "convert") continue;
            if (!args.Any(a => roots.Any(r => a.StartsWith(r, StringComparison.Ordinal)))) continue;
            if (ProcStat.Read(pid) is { IsZombie: false } stat) yield return (stat, args);
        }
    }
}
