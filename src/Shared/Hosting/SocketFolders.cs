using System.Security.Cryptography;
using System.Text;

namespace LiveMigration.Shared.Hosting;

/// <summary>
/// Where a host keeps its QMP and NBD sockets when its run directory cannot (too deep for the 107-byte socket path limit,
/// or QEMU runs as its own account): a folder per run directory under a parent no other user can write. The host makes
/// it; <c>lsm local down</c> removes it once the host's VMs are gone. Both name it here, so they name the same folder.
/// </summary>
public static class SocketFolders
{
    /// <summary>Root's parent of the stand-in folders: /run is root's alone to write, and cleared at boot, as the sockets are.</summary>
    public const string SharedParent = "/run/lsm";

    /// <summary>The stand-in folder of <paramref name="runDirectory"/> (absolute): the same on every start, so a restarted host finds it.</summary>
    public static string StandIn(string runDirectory)
    {
        var name = "lsm-" + Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(runDirectory)))[..8];
        if (Environment.UserName == "root" || Environment.GetEnvironmentVariable("XDG_RUNTIME_DIR") is not { Length: > 0 })
            return Path.Combine(SharedParent, name);
        return Path.Combine(Environment.GetEnvironmentVariable("XDG_RUNTIME_DIR")!, name);
    }
}
