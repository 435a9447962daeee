using System.Net;
using System.Net.NetworkInformation;
using LiveMigration.Shared.Processes;

namespace LiveMigration.HostNode.Spm;

/// <summary>
/// The process that holds the SPM lease, as the lease record names it: the kernel it runs under (its boot id), its pid and
/// time namespaces, its pid and the pid's start time. Enough for an acquirer under the same kernel and namespaces to prove the
/// holder dead (no process with its pid, or the pid now another process's, started at another time) and take the lease at once instead of
/// watching the record for a period, as sanlock frees the leases of a host that came back under a new generation of its
/// host id. That is the usual case of a crash: the HostNode restarted on the same machine. A holder on another kernel, or
/// one alive but frozen or cut off, is proven nothing about, and the acquirer watches the record as before; and so is one
/// whose cluster address is not this machine's (<see cref="NamesThisMachine"/>: machines cloned from one memory snapshot
/// share the boot id).
/// </summary>
/// <param name="Namespaces">The pid and time namespaces, as /proc/self/ns names them ("pid:[…] time:[…]").</param>
public sealed record HolderProcess(string BootId, string Namespaces, int Pid, long StartTicks)
{
    private const string ProcRoot = "/proc";
    private static readonly Lazy<HolderProcess?> This = new(() => Read(Environment.ProcessId));

    /// <summary>This process, or null where /proc does not tell (not Linux): then no record names a process.</summary>
    public static HolderProcess? Current => This.Value;

    /// <summary>
    /// True only when this process can tell for certain that the holder no longer runs: same kernel (boot id) and the same
    /// namespaces as this one, and no process with its pid (the kernel says so: kill(pid, 0) fails with ESRCH, which no
    /// /proc mount option hides), or its pid now run by a process that started at another time. A process that is gone
    /// writes nothing more, so the lease it held is as good as released. A zombie still counts as alive (other threads of
    /// it may still be in a write), and so does anything this process cannot read or compare.
    /// </summary>
    public bool IsProvablyGone()
    {
        if (Current is not { } self || self.BootId != BootId || self.Namespaces != Namespaces) return false;
        if (Pid == self.Pid && StartTicks == self.StartTicks) return false; // this very process
        if (ProcessSignals.IsProvablyGone(Pid)) return true;
        // alive (a zombie too: other threads of it may still be in a write), or not ours to signal: gone only when its pid is
        // now another process's; unreadable (it went between the two looks) proves nothing
        return ProcStat.Read(Pid, ProcRoot) is { } now && now.StartTicks != StartTicks;
    }

    /// <summary>
    /// True when a lease holder's name (its cluster address, <c>system@host:port</c>, as Akka names a lease's owner) has an
    /// IP address of this machine as its host. The boot id alone does not tell machines apart that were cloned from one
    /// memory snapshot (same kernel, same namespaces, same pids, running side by side); their network addresses differ, so
    /// a holder whose process is missing here is proven gone only when its address is this machine's too. A host name
    /// (not an IP literal) proves nothing; a loopback address or localhost is this machine's by definition (one machine's cluster).
    /// </summary>
    public static bool NamesThisMachine(string holder)
    {
        var at = holder.LastIndexOf('@');
        var colon = holder.LastIndexOf(':');
        if (at < 0 || colon <= at + 1) return false;
        var host = holder[(at + 1)..colon].Trim('[', ']');
        if (host.Equals("localhost", StringComparison.OrdinalIgnoreCase)) return true;
        if (!IPAddress.TryParse(host, out var address)) return false;
        if (IPAddress.IsLoopback(address)) return true;
        try
        {
            return NetworkInterface.GetAllNetworkInterfaces()
                .SelectMany(n => n.GetIPProperties().UnicastAddresses)
                .Any(unicast => unicast.Address.Equals(address));
        }
        catch (NetworkInformationException)
        {
            return false;
        }
    }

    /// <summary>The process <paramref name="pid"/> as a record names it, or null when /proc does not tell.</summary>
    internal static HolderProcess? Read(int pid)
    {
        try
        {
            var bootId = File.ReadAllText($"{ProcRoot}/sys/kernel/random/boot_id").Trim();
            // This process's pid and time namespaces (a start time reads differently in another time namespace); and /proc
            // must be this pid namespace's, or the pids it shows are another namespace's.
            var pidNamespace = new FileInfo($"{ProcRoot}/self/ns/pid").LinkTarget;
            var timeNamespace = new FileInfo($"{ProcRoot}/self/ns/time").LinkTarget ?? "";
            if (ProcStat.Parse(File.ReadAllText($"{ProcRoot}/self/stat"))?.Pid != Environment.ProcessId)
                return null;
            var stat = ProcStat.Read(pid, ProcRoot);
            return bootId.Length == 0 || string.IsNullOrEmpty(pidNamespace) || stat is null
                ? null
                : new HolderProcess(bootId, $"{pidNamespace} {timeNamespace}".TrimEnd(), pid, stat.StartTicks);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }
}
