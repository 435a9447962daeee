using LiveMigration.Cli.Local;
using LiveMigration.HostNode.Processes;
using LiveMigration.Shared.Model;

namespace LiveMigration.Demo.Cluster;

/// <summary>
/// libvirtd for the demo and the multi-process tests, through deploy/libvirt/setup.sh (root): started when it
/// does not answer; disposing stops it by its pid only when this started it, and leaves a daemon that ran before alone.
/// </summary>
public sealed class LibvirtDaemon : IAsyncDisposable
{
    private LibvirtDaemon(int pid, bool startedHere, TimeSpan took)
    {
        Pid = pid;
        StartedHere = startedHere;
        Took = took;
    }

    public int Pid { get; }

    /// <summary>True when setup.sh started it for this run (then disposing stops it).</summary>
    public bool StartedHere { get; }

    /// <summary>How long setup.sh took (about 5 s when it starts the daemon, well under 1 s when it ran already).</summary>
    public TimeSpan Took { get; }

    public static string SetupScript => Path.Combine(LocalCluster.FindRepositoryRoot(), "deploy", "libvirt", "setup.sh");

    /// <summary>Runs setup.sh (idempotent) and reads its last line: <c>libvirtd started|running PID</c>.</summary>
    public static async Task<LibvirtDaemon> EnsureRunningAsync(CancellationToken ct = default)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var output = await ProcessRunner.RunCheckedAsync("bash", [SetupScript], ErrorCodes.IoError, ct);
        var last = output.Trim().Split('\n')[^1].Split(' ');
        if (last is not ["libvirtd", "started" or "running", var pidText] || !int.TryParse(pidText, out var pid))
            throw new OperationFailedException(ErrorCodes.IoError, $"{SetupScript} ended with '{string.Join(' ', last)}', not 'libvirtd started|running PID'");
        return new LibvirtDaemon(pid, last[1] == "started", clock.Elapsed);
    }

    public async ValueTask DisposeAsync()
    {
        if (!StartedHere) return;
        // The pid is ours only while it still names a libvirtd (not a process that reused the number).
        bool IsLibvirtd() => ProcessTable.IsAlive(Pid) && ProcessTable.CommandLine(Pid) is [var program, ..] && Path.GetFileName(program) == "libvirtd";
        if (!IsLibvirtd()) return;
        ProcessTable.Signal(Pid, ProcessTable.SigTerm);
        if ((await ProcessTable.WaitGoneAsync([Pid], _ => IsLibvirtd(), TimeSpan.FromSeconds(10))).Count > 0)
        {
            ProcessTable.Signal(Pid, ProcessTable.SigKill);
            await ProcessTable.WaitGoneAsync([Pid], _ => IsLibvirtd(), TimeSpan.FromSeconds(5));
        }
    }
}
