using System.Runtime.InteropServices;
using LiveMigration.Shared.Model;
using IOFile = System.IO.File;

namespace LiveMigration.HostNode.Storage.File;

/// <summary>
/// The POSIX calls .NET does not offer: a file's allocated size (st_blocks, what a sparse volume really takes), fsync of
/// a folder (what makes a rename durable), locks, allocation and early writeback.
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

    // fallocate(2), not posix_fallocate: where the file system cannot allocate, glibc's posix_fallocate falls back to
    // reading each block and writing a zero byte into those that read zero, which races with a writer (QEMU) and could
    // overwrite its data. fallocate only allocates, or fails with EOPNOTSUPP.
    [DllImport("libc", EntryPoint = "fallocate", SetLastError = true)]
    private static extern int Fallocate(int fd, int mode, long offset, long length);

    [DllImport("libc", EntryPoint = "sync_file_range", SetLastError = true)]
    private static extern int SyncFileRange(int fd, long offset, long count, uint flags);

    private const uint SyncFileRangeWrite = 2; // SYNC_FILE_RANGE_WRITE: start writing dirty pages out, wait for none

    [DllImport("libc", EntryPoint = "chown", SetLastError = true)]
    private static extern int Chown([MarshalAs(UnmanagedType.LPUTF8Str)] string path, uint owner, uint group);

    [DllImport("libc", EntryPoint = "close", SetLastError = true)]
    private static extern int Close(int fd);

    [DllImport("libc", EntryPoint = "fcntl", SetLastError = true)]
    private static extern int FcntlLock(int fd, int command, ref Flock flock);

    // struct flock on 64-bit Linux: short l_type, short l_whence, off_t l_start, off_t l_len, pid_t l_pid (32 bytes with padding).
    [StructLayout(LayoutKind.Sequential)]
    private struct Flock
    {
        public short Type;
        public short Whence;
        public long Start;
        public long Length;
        public int Pid;
    }

    private const int FOfdGetLk = 36; // F_OFD_GETLK, the same on every Linux architecture
    private const short FWrLck = 1;
    private const short FUnLck = 2;

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

    /// <summary>
    /// The bytes a running process has passed to write calls so far (<c>wchar</c> in <c>/proc/PID/io</c>, all its threads);
    /// null when it is gone or cannot be read.
    /// </summary>
    public static long? BytesWrittenBy(int pid)
    {
        try
        {
            foreach (var line in IOFile.ReadLines($"/proc/{pid}/io"))
                if (line.StartsWith("wchar:", StringComparison.Ordinal)
                    && long.TryParse(line.AsSpan(6).Trim(), System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var bytes))
                    return bytes;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
        }
        return null;
    }

    /// <summary>Gives <paramref name="path"/> to <paramref name="group"/>, its owner unchanged (chown with owner -1).</summary>
    public static void SetGroup(string path, int group)
    {
        if (!OperatingSystem.IsLinux()) return;
        if (Chown(path, uint.MaxValue, (uint)group) != 0)
            throw new OperationFailedException(ErrorCodes.IoError,
                $"cannot give {path} to group {group}: errno {Marshal.GetLastPInvokeError()}");
    }

    /// <summary>Gives <paramref name="path"/> to <paramref name="owner"/> and <paramref name="group"/>.</summary>
    public static void SetOwner(string path, int owner, int group)
    {
        if (!OperatingSystem.IsLinux()) return;
        if (Chown(path, (uint)owner, (uint)group) != 0)
            throw new OperationFailedException(ErrorCodes.IoError,
                $"cannot give {path} to user {owner} and group {group}: errno {Marshal.GetLastPInvokeError()}");
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

    /// <summary>
    /// Whether any process holds a lock on the file, found without taking one: QEMU (and qemu-img, qemu-nbd)
    /// takes OFD locks on every image it opens, even a read-only backing file takes a shared lock on byte 100
    /// (measured: a qemu-nbd export of a leaf locks the leaf at 100-101, 103, 201, 203 and its raw base at 100).
    /// F_OFD_GETLK asking for a write lock over the whole file reports any of them, in microseconds, on a
    /// read-only descriptor. (<c>qemu-img info</c> without -U does not: it succeeds on a base held only for
    /// reading.) Returns a description of the first lock found, null when there is none or the file is gone.
    /// </summary>
    public static string? LockHolder(string path)
    {
        if (!NativeSupported) return null;
        var fd = Open(path, ORdOnly);
        if (fd < 0) return null;
        try
        {
            var probe = new Flock { Type = FWrLck, Whence = 0, Start = 0, Length = 0, Pid = 0 };
            if (FcntlLock(fd, FOfdGetLk, ref probe) != 0)
                throw new OperationFailedException(ErrorCodes.IoError,
                    $"cannot ask whether {path} is locked (fcntl F_OFD_GETLK, errno {Marshal.GetLastPInvokeError()})");
            if (probe.Type == FUnLck) return null;
            // An OFD lock has no owning process (l_pid is -1); a classic POSIX lock names its pid.
            return $"{(probe.Type == FWrLck ? "a write" : "a read")} lock on bytes {probe.Start}" +
                   $"{(probe.Length > 1 ? $"-{probe.Start + probe.Length - 1}" : "")}" +
                   $"{(probe.Pid > 0 ? $" held by pid {probe.Pid}" : " (an open file description, as QEMU holds)")}";
        }
        finally
        {
            Close(fd);
        }
    }

    /// <summary>
    /// Allocates every byte of the file up to its size (fallocate mode 0): holes become allocated space that reads as
    /// zeroes, and no byte the file holds changes, even while QEMU writes it. What makes a copied raw volume
    /// preallocated again after qemu-img or a mirror punched holes where the source read zero.
    /// </summary>
    public static void AllocateWhole(string path)
    {
        if (!NativeSupported) return;
        using var stream = new FileStream(path, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite);
        if (stream.Length == 0) return;
        if (Fallocate((int)stream.SafeFileHandle.DangerousGetHandle(), 0, 0, stream.Length) == 0) return;
        var error = Marshal.GetLastPInvokeError();
        throw new OperationFailedException(error == ENoSpc ? ErrorCodes.NotEnoughSpace : ErrorCodes.IoError,
            $"cannot allocate the {stream.Length} bytes of {path}: {Marshal.GetPInvokeErrorMessage(error)} (errno {error})");
    }

    private const int ENoSpc = 28;

    /// <summary>
    /// Starts writing the file's dirty pages out and returns without waiting (sync_file_range with WRITE alone): lets the disk
    /// work while a copy is still filling the page cache, so the fsync that makes the copy durable finds little left. Durability
    /// is decided by <see cref="FsyncFile"/> only; this is a hint, and a failure of it changes nothing.
    /// </summary>
    public static void StartWriteback(string path)
    {
        if (!NativeSupported) return;
        var fd = Open(path, ORdOnly);
        if (fd < 0) return;
        try
        {
            SyncFileRange(fd, 0, 0, SyncFileRangeWrite);
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
