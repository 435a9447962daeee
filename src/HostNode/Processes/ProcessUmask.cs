using System.Runtime.InteropServices;

namespace LiveMigration.HostNode.Processes;

/// <summary>
/// The HostNode's file-creation mask. 007 keeps every file and folder this process and its children (qemu-img, QEMU)
/// create closed to other users: guest disks, metadata, logs, sockets. It is a backstop: the storage code sets its
/// modes explicitly (StorageModes), but a file some other path creates would otherwise get the usual 022's
/// world-readable 0644. Group access stays, for the group QEMU will run in.
/// </summary>
public static class ProcessUmask
{
    public const uint HostNodeMask = 0b000_000_111; // 007

    [DllImport("libc", EntryPoint = "umask")]
    private static extern uint NativeUmask(uint mask);

    /// <summary>Sets the mask for the whole process (and the programs it starts from now on); returns the previous one.</summary>
    public static uint Set(uint mask) => OperatingSystem.IsLinux() ? NativeUmask(mask) : 0;
}
