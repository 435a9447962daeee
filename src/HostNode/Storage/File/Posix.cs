using System.Runtime.InteropServices;
using LiveMigration.Shared.Model;
using IOFile = System.IO.File;

namespace LiveMigration.HostNode.Storage.File;

/// <summary>
/// The two POSIX calls .NET does not offer: a file's allocated size (st_blocks, what a sparse
/// volume really takes) and fsync of a folder (what makes a rename durable).
/// </summary>
internal static class Posix
{
    private const int ORdOnly = 0;
    private const int ODirectory = 0x10000; // Linux, x86_64 and aarch64
    // struct stat on 64-bit Linux (x86_64 and the generic layout of aarch64): st_blocks is at byte 64.
    private const int StBlocksOffset = 64;
    private const int StatBufferSize = 256;

    [DllImport("libc", EntryPoint = "stat", SetLastError = true)]
    private static extern int Stat([MarshalAs(UnmanagedType.LPUTF8Str)] string path, byte[] buffer);

    [DllImport("libc", EntryPoint = "open", SetLastError = true)]
    private static extern int Open([MarshalAs(UnmanagedType.LPUTF8Str)] string path, int flags);

    [DllImport("libc", EntryPoint = "fsync", SetLastError = true)]
    private static extern int Fsync(int fd);

    [DllImport("libc", EntryPoint = "close", SetLastError = true)]
    private static extern int Close(int fd);

    private static bool NativeSupported =>
        OperatingSystem.IsLinux() && RuntimeInformation.ProcessArchitecture is Architecture.X64 or Architecture.Arm64;

    /// <summary>Bytes the file takes on disk (st_blocks × 512); 0 when it does not exist.</summary>
    public static long AllocatedBytes(string path)
    {
        if (!NativeSupported)
            return IOFile.Exists(path) ? new FileInfo(path).Length : 0;
        var buffer = new byte[StatBufferSize];
        if (Stat(path, buffer) != 0) return 0;
        return BitConverter.ToInt64(buffer, StBlocksOffset) * 512;
    }

    public static void FsyncDirectory(string folder)
    {
        if (!NativeSupported) return;
        var fd = Open(folder, ORdOnly | ODirectory);
        if (fd < 0)
            throw new OperationFailedException(ErrorCodes.IoError, $"cannot open folder {folder} to fsync it (errno {Marshal.GetLastPInvokeError()})");
        try
        {
            if (Fsync(fd) != 0)
                throw new OperationFailedException(ErrorCodes.IoError, $"fsync of folder {folder} failed (errno {Marshal.GetLastPInvokeError()})");
        }
        finally
        {
            Close(fd);
        }
    }

    /// <summary>Flushes a file's data to disk (after qemu-img wrote it, before it is declared LEGAL).</summary>
    public static void FsyncFile(string path)
    {
        using var stream = new FileStream(path, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite);
        stream.Flush(flushToDisk: true);
    }
}
