using System.Collections.Concurrent;
using System.Runtime.InteropServices;
using LiveMigration.Shared.Model;
using Microsoft.Win32.SafeHandles;

namespace LiveMigration.HostNode.Hypervisor.Libvirt;

/// <summary>
/// The whole interop with <c>libvirt.so.0</c> (and <c>libvirt-qemu.so.0</c> for the one monitor pass-through):
/// strings are UTF-8, strings libvirt allocates are freed with <c>free()</c>, connections and domains live in
/// SafeHandles, and a failed call becomes an <see cref="OperationFailedException"/> carrying libvirt's own message
/// (read on the failing thread: libvirt keeps its last error per thread). Every call blocks on an RPC to
/// libvirtd, so callers run them off the actor threads.
/// </summary>
internal static class LibvirtNative
{
    private const string Lib = "libvirt.so.0";
    private const string QemuLib = "libvirt-qemu.so.0";
    private const string LibC = "libc";

    // ---- numbers from libvirt's public headers (stable ABI) ----
    public const int ErrNoDomain = 42;
    public const int ErrOperationInvalid = 55;
    public const uint ListDomainsActive = 1;
    public const uint BlockCopyShallow = 1;
    public const uint BlockCopyReuseExternal = 2;
    public const uint BlockCopySynchronousWrites = 8;
    public const uint BlockJobAbortPivot = 2;
    public const uint BlockJobBandwidthBytes = 1;
    public const uint SnapshotNoMetadata = 4;
    public const uint SnapshotDiskOnly = 16;
    public const uint SnapshotReuseExternal = 32;
    public const uint SnapshotAtomic = 128;
    public const int EventIdLifecycle = 0;
    public const int EventIdBlockJob2 = 16;
    public const int LifecycleStopped = 5;
    public const int LifecycleCrashed = 8;
    public const int BlockJobCompleted = 0;
    public const int BlockJobFailed = 1;
    public const int BlockJobCanceled = 2;
    public const int BlockJobReady = 3;
    private const int TypedParamULongLong = 4;
    private const int TypedParamSize = 96; // char field[80]; int type; (pad) union value (8 bytes)

    [StructLayout(LayoutKind.Sequential)]
    public struct BlockJobInfo
    {
        public int Type;
        public nuint Bandwidth; // unsigned long: 8 bytes on 64-bit Linux
        public ulong Cur;
        public ulong End;
    }

    [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
    private delegate void ErrorFunc(IntPtr userData, IntPtr error);

    [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
    public delegate int LifecycleCallback(IntPtr conn, IntPtr dom, int eventType, int detail, IntPtr opaque);

    [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
    public delegate void BlockJobCallback(IntPtr conn, IntPtr dom, IntPtr disk, int type, int status, IntPtr opaque);

    [DllImport(Lib)] private static extern IntPtr virConnectOpen([MarshalAs(UnmanagedType.LPUTF8Str)] string name);
    [DllImport(Lib)] internal static extern int virConnectClose(IntPtr conn);
    [DllImport(Lib)] private static extern IntPtr virDomainCreateXML(ConnectHandle conn, [MarshalAs(UnmanagedType.LPUTF8Str)] string xml, uint flags);
    [DllImport(Lib)] private static extern IntPtr virDomainLookupByUUIDString(ConnectHandle conn, [MarshalAs(UnmanagedType.LPUTF8Str)] string uuid);
    [DllImport(Lib)] private static extern IntPtr virDomainLookupByName(ConnectHandle conn, [MarshalAs(UnmanagedType.LPUTF8Str)] string name);
    [DllImport(Lib)] private static extern int virDomainDestroy(DomainHandle dom);
    [DllImport(Lib)] internal static extern int virDomainFree(IntPtr dom);
    [DllImport(Lib)] private static extern IntPtr virDomainGetXMLDesc(DomainHandle dom, uint flags);
    [DllImport(Lib)] private static extern IntPtr virDomainGetName(IntPtr dom);
    [DllImport(Lib)] private static extern int virDomainIsActive(DomainHandle dom);
    [DllImport(Lib)] private static extern int virDomainBlockCopy(DomainHandle dom, [MarshalAs(UnmanagedType.LPUTF8Str)] string disk,
        [MarshalAs(UnmanagedType.LPUTF8Str)] string destXml, IntPtr parameters, int nparams, uint flags);
    [DllImport(Lib)] private static extern int virDomainGetBlockJobInfo(DomainHandle dom, [MarshalAs(UnmanagedType.LPUTF8Str)] string disk,
        out BlockJobInfo info, uint flags);
    [DllImport(Lib)] private static extern int virDomainBlockJobAbort(DomainHandle dom, [MarshalAs(UnmanagedType.LPUTF8Str)] string disk, uint flags);
    [DllImport(Lib)] private static extern int virDomainBlockJobSetSpeed(DomainHandle dom, [MarshalAs(UnmanagedType.LPUTF8Str)] string disk,
        nuint bandwidth, uint flags);
    [DllImport(Lib)] private static extern IntPtr virDomainSnapshotCreateXML(DomainHandle dom, [MarshalAs(UnmanagedType.LPUTF8Str)] string xml, uint flags);
    [DllImport(Lib)] private static extern int virDomainSnapshotFree(IntPtr snapshot);
    [DllImport(Lib)] private static extern int virConnectListAllDomains(ConnectHandle conn, out IntPtr domains, uint flags);
    [DllImport(Lib)] private static extern IntPtr virGetLastError();
    [DllImport(Lib)] private static extern void virResetLastError();
    [DllImport(Lib)] private static extern void virSetErrorFunc(IntPtr userData, ErrorFunc handler);
    [DllImport(Lib)] private static extern int virEventRegisterDefaultImpl();
    [DllImport(Lib)] private static extern int virEventRunDefaultImpl();
    [DllImport(Lib)] private static extern int virConnectDomainEventRegisterAny(ConnectHandle conn, IntPtr dom, int eventId,
        IntPtr callback, IntPtr opaque, IntPtr freeCallback);
    [DllImport(Lib)] private static extern int virConnectDomainEventDeregisterAny(ConnectHandle conn, int callbackId);
    [DllImport(QemuLib)] private static extern int virDomainQemuMonitorCommand(DomainHandle dom, [MarshalAs(UnmanagedType.LPUTF8Str)] string cmd,
        out IntPtr result, uint flags);
    [DllImport(LibC, EntryPoint = "free")] private static extern void Free(IntPtr pointer);
    [DllImport(LibC, EntryPoint = "link", SetLastError = true)] private static extern int Link([MarshalAs(UnmanagedType.LPUTF8Str)] string existing,
        [MarshalAs(UnmanagedType.LPUTF8Str)] string newPath);

    // ---- process-wide set-up: quiet errors, one event loop thread ----

    private static readonly object InitGate = new();
    private static bool _initialized;
    // Kept alive for as long as libvirt may call them (the process's lifetime).
    private static readonly ErrorFunc QuietErrors = (_, _) => { };

    /// <summary>
    /// Once per process, before the first connection: silences libvirt's default error printing (errors are
    /// read with virGetLastError instead) and runs libvirt's default event loop on a background thread so
    /// domain events (lifecycle, block jobs) arrive as they happen.
    /// </summary>
    private static void EnsureInitialized()
    {
        lock (InitGate)
        {
            if (_initialized) return;
            virSetErrorFunc(IntPtr.Zero, QuietErrors);
            if (virEventRegisterDefaultImpl() < 0) throw Failure(ErrorCodes.IoError, "virEventRegisterDefaultImpl");
            var loop = new Thread(() =>
            {
                while (true)
                {
                    if (virEventRunDefaultImpl() < 0) Thread.Sleep(100); // an error here is transient (a closed fd); keep serving
                }
            })
            { IsBackground = true, Name = "libvirt-event-loop" };
            loop.Start();
            _initialized = true;
        }
    }

    // ---- calls ----

    public static ConnectHandle Open(string uri)
    {
        EnsureInitialized();
        var handle = virConnectOpen(uri);
        if (handle == IntPtr.Zero) throw Failure(ErrorCodes.IoError, $"cannot connect to libvirt at {uri} (is libvirtd running? deploy/libvirt/setup.sh starts it)");
        return new ConnectHandle(handle);
    }

    public static DomainHandle CreateDomain(ConnectHandle conn, string xml) =>
        Domain(virDomainCreateXML(conn, xml, 0), ErrorCodes.IoError, "virDomainCreateXML");

    /// <summary>The domain, or null when libvirt knows none with that UUID.</summary>
    public static DomainHandle? LookupByUuid(ConnectHandle conn, Guid uuid)
    {
        var handle = virDomainLookupByUUIDString(conn, uuid.ToString("D"));
        if (handle != IntPtr.Zero) return new DomainHandle(handle);
        var error = LastError();
        if (error.Code == ErrNoDomain) return null;
        throw Failure(ErrorCodes.IoError, $"virDomainLookupByUUIDString({uuid})", error);
    }

    public static DomainHandle? LookupByName(ConnectHandle conn, string name)
    {
        var handle = virDomainLookupByName(conn, name);
        if (handle != IntPtr.Zero) return new DomainHandle(handle);
        var error = LastError();
        if (error.Code == ErrNoDomain) return null;
        throw Failure(ErrorCodes.IoError, $"virDomainLookupByName({name})", error);
    }

    public static void Destroy(DomainHandle dom, string what) => Check(virDomainDestroy(dom), ErrorCodes.IoError, what);

    public static bool IsActive(DomainHandle dom)
    {
        var active = virDomainIsActive(dom);
        if (active < 0) throw Failure(ErrorCodes.IoError, "virDomainIsActive");
        return active == 1;
    }

    public static string GetXmlDesc(DomainHandle dom, string what) =>
        TakeString(virDomainGetXMLDesc(dom, 0)) ?? throw Failure(ErrorCodes.IoError, what);

    /// <summary>The name of a domain libvirt lends to an event callback (no RPC, safe on the event loop thread).</summary>
    public static string? BorrowedDomainName(IntPtr dom) => Marshal.PtrToStringUTF8(virDomainGetName(dom));

    public static void BlockCopy(DomainHandle dom, string disk, string destinationXml, long bandwidthBytesPerSecond, uint flags, string what)
    {
        var parameters = IntPtr.Zero;
        var count = 0;
        try
        {
            if (bandwidthBytesPerSecond > 0)
            {
                parameters = Marshal.AllocHGlobal(TypedParamSize);
                for (var i = 0; i < TypedParamSize; i++) Marshal.WriteByte(parameters, i, 0);
                var field = "bandwidth"u8;
                for (var i = 0; i < field.Length; i++) Marshal.WriteByte(parameters, i, field[i]);
                Marshal.WriteInt32(parameters, 80, TypedParamULongLong);
                Marshal.WriteInt64(parameters, 88, bandwidthBytesPerSecond);
                count = 1;
            }
            Check(virDomainBlockCopy(dom, disk, destinationXml, parameters, count, flags), ErrorCodes.JobFailed, what);
        }
        finally
        {
            if (parameters != IntPtr.Zero) Marshal.FreeHGlobal(parameters);
        }
    }

    /// <summary>The disk's block job (bandwidth in bytes/s), or null when it has none.</summary>
    public static BlockJobInfo? GetBlockJobInfo(DomainHandle dom, string disk, string what)
    {
        var found = virDomainGetBlockJobInfo(dom, disk, out var info, BlockJobBandwidthBytes);
        if (found < 0) throw Failure(ErrorCodes.JobFailed, what);
        return found == 0 ? null : info;
    }

    public static void BlockJobAbort(DomainHandle dom, string disk, uint flags, string what) =>
        Check(virDomainBlockJobAbort(dom, disk, flags), ErrorCodes.JobFailed, what);

    public static void BlockJobSetSpeed(DomainHandle dom, string disk, long bytesPerSecond, string what) =>
        Check(virDomainBlockJobSetSpeed(dom, disk, (nuint)bytesPerSecond, BlockJobBandwidthBytes), ErrorCodes.JobFailed, what);

    public static void SnapshotCreate(DomainHandle dom, string xml, uint flags, string what)
    {
        var snapshot = virDomainSnapshotCreateXML(dom, xml, flags);
        if (snapshot == IntPtr.Zero) throw Failure(ErrorCodes.JobFailed, what);
        virDomainSnapshotFree(snapshot);
    }

    /// <summary>Every domain the flags select; the caller owns (disposes) the handles.</summary>
    public static IReadOnlyList<DomainHandle> ListAllDomains(ConnectHandle conn, uint flags)
    {
        var count = virConnectListAllDomains(conn, out var array, flags);
        if (count < 0) throw Failure(ErrorCodes.IoError, "virConnectListAllDomains");
        try
        {
            var list = new List<DomainHandle>(count);
            for (var i = 0; i < count; i++) list.Add(new DomainHandle(Marshal.ReadIntPtr(array, i * IntPtr.Size)));
            return list;
        }
        finally
        {
            Free(array);
        }
    }

    /// <summary>A QMP command through libvirt (taints the domain as custom-monitor); returns QEMU's JSON answer.</summary>
    public static string QemuMonitorCommand(DomainHandle dom, string json, string what)
    {
        Check(virDomainQemuMonitorCommand(dom, json, out var result, 0), ErrorCodes.QmpError, what);
        return TakeString(result) ?? "";
    }

    public static int RegisterDomainEvent(ConnectHandle conn, int eventId, IntPtr callback, IntPtr opaque)
    {
        var id = virConnectDomainEventRegisterAny(conn, IntPtr.Zero, eventId, callback, opaque, IntPtr.Zero);
        if (id < 0) throw Failure(ErrorCodes.IoError, $"virConnectDomainEventRegisterAny(event {eventId})");
        return id;
    }

    public static void DeregisterDomainEvent(ConnectHandle conn, int callbackId) =>
        virConnectDomainEventDeregisterAny(conn, callbackId);

    /// <summary>A second name for a file (link(2)): the backing switch keeps the layer QEMU runs on reachable while its path is replaced.</summary>
    public static void HardLink(string existing, string newPath)
    {
        if (Link(existing, newPath) != 0)
            throw new OperationFailedException(ErrorCodes.IoError,
                $"cannot link {existing} as {newPath}: {Marshal.GetPInvokeErrorMessage(Marshal.GetLastPInvokeError())}");
    }

    // ---- errors and memory ----

    /// <summary>libvirt's last error on this thread: its number and message.</summary>
    public readonly record struct Error(int Code, string Message);

    public static Error LastError()
    {
        var pointer = virGetLastError();
        if (pointer == IntPtr.Zero) return new Error(0, "no error reported by libvirt");
        // struct _virError { int code; int domain; char *message; ... }
        var code = Marshal.ReadInt32(pointer, 0);
        var message = Marshal.PtrToStringUTF8(Marshal.ReadIntPtr(pointer, 8)) ?? "";
        virResetLastError();
        return new Error(code, message);
    }

    /// <summary>The libvirt error number behind a failure made here (0 when there is none).</summary>
    public static int LibvirtCode(OperationFailedException e) => e.InnerException is LibvirtCallException call ? call.LibvirtCode : 0;

    private static void Check(int result, string code, string what)
    {
        if (result < 0) throw Failure(code, what);
    }

    private static DomainHandle Domain(IntPtr handle, string code, string what) =>
        handle != IntPtr.Zero ? new DomainHandle(handle) : throw Failure(code, what);

    private static OperationFailedException Failure(string code, string what, Error? known = null)
    {
        var error = known ?? LastError();
        // A domain that vanished mid-call is a VM that is not running any more, whatever the call was.
        var effective = error.Code == ErrNoDomain
                        || (error.Code == ErrOperationInvalid && error.Message.Contains("not running", StringComparison.Ordinal))
            ? ErrorCodes.VmNotRunning
            : code;
        return new OperationFailedException(effective, $"{what} failed: {error.Message} (libvirt error {error.Code})",
            new LibvirtCallException(error.Code, error.Message));
    }

    /// <summary>Copies a string libvirt allocated for us, then frees it.</summary>
    private static string? TakeString(IntPtr pointer)
    {
        if (pointer == IntPtr.Zero) return null;
        try { return Marshal.PtrToStringUTF8(pointer); }
        finally { Free(pointer); }
    }
}

/// <summary>The libvirt error a call failed with, kept as the inner exception of its <see cref="OperationFailedException"/>.</summary>
internal sealed class LibvirtCallException(int libvirtCode, string message) : Exception(message)
{
    public int LibvirtCode { get; } = libvirtCode;
}

/// <summary>A <c>virConnectPtr</c>: closed (reference dropped) when released.</summary>
internal sealed class ConnectHandle : SafeHandleZeroOrMinusOneIsInvalid
{
    public ConnectHandle() : base(true) { }
    public ConnectHandle(IntPtr handle) : base(true) => SetHandle(handle);
    protected override bool ReleaseHandle() => LibvirtNative.virConnectClose(handle) >= 0;
}

/// <summary>A <c>virDomainPtr</c>: freed (reference dropped; the domain itself keeps running) when released.</summary>
internal sealed class DomainHandle : SafeHandleZeroOrMinusOneIsInvalid
{
    public DomainHandle() : base(true) { }
    public DomainHandle(IntPtr handle) : base(true) => SetHandle(handle);
    protected override bool ReleaseHandle() => LibvirtNative.virDomainFree(handle) == 0;
}

/// <summary>
/// Routes libvirt's event callbacks (on its event loop thread) to the hypervisor instance that registered them.
/// The delegates are static so libvirt's function pointers stay valid for the process's lifetime.
/// </summary>
internal static class LibvirtEvents
{
    private static readonly ConcurrentDictionary<IntPtr, ILibvirtEventSink> Sinks = new();
    private static long _nextId;

    public static readonly LibvirtNative.LifecycleCallback Lifecycle = OnLifecycle;
    public static readonly LibvirtNative.BlockJobCallback BlockJob = OnBlockJob;
    public static readonly IntPtr LifecyclePointer = Marshal.GetFunctionPointerForDelegate(Lifecycle);
    public static readonly IntPtr BlockJobPointer = Marshal.GetFunctionPointerForDelegate(BlockJob);

    public static IntPtr Add(ILibvirtEventSink sink)
    {
        var id = (IntPtr)Interlocked.Increment(ref _nextId);
        Sinks[id] = sink;
        return id;
    }

    public static void Remove(IntPtr id) => Sinks.TryRemove(id, out _);

    private static int OnLifecycle(IntPtr conn, IntPtr dom, int eventType, int detail, IntPtr opaque)
    {
        if (Sinks.TryGetValue(opaque, out var sink) && LibvirtNative.BorrowedDomainName(dom) is { } name)
            sink.OnLifecycle(name, eventType, detail);
        return 0;
    }

    private static void OnBlockJob(IntPtr conn, IntPtr dom, IntPtr disk, int type, int status, IntPtr opaque)
    {
        if (Sinks.TryGetValue(opaque, out var sink) && LibvirtNative.BorrowedDomainName(dom) is { } name
            && Marshal.PtrToStringUTF8(disk) is { } target)
            sink.OnBlockJob(name, target, status);
    }
}

/// <summary>What receives a connection's domain events. Called on libvirt's event loop thread: must not call libvirt back.</summary>
internal interface ILibvirtEventSink
{
    void OnLifecycle(string domainName, int eventType, int detail);
    void OnBlockJob(string domainName, string target, int status);
}
